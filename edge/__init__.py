"""The edge node: capture frames, run head.onnx, entropy-code the cut tensor and send it to the cloud."""
