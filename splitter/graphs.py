"""The torch modules that become head.onnx and tail.onnx.

The head takes raw uint8 RGB frames (N, H, W, 3) and ends in the quantizer, so the edge does
nothing but resize, run the graph and entropy-code integer codes. The tail starts with the
dequantizer. The quantizer ops match codec.quantizer bit for bit (Div, Round half-to-even,
Add, Clip, Cast), which tests/test_split.py checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from codec import QuantParams


def _channel_view(values, axis) -> torch.Tensor:
    t = torch.tensor(np.array(values, dtype=np.float32))
    return t.view(1, -1, 1, 1) if axis is not None else t.view(())


class Preprocess(nn.Module):
    """uint8 NHWC RGB -> normalized float NCHW, as the model was trained."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std


class Quantize(nn.Module):
    def __init__(self, q: QuantParams):
        super().__init__()
        self.register_buffer("scale", _channel_view(q.scale, q.axis))
        self.register_buffer("zero_point", _channel_view(q.zero_point, q.axis))
        self.qmax = float(2**q.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, 0.0, self.qmax).to(torch.uint8)


class Dequantize(nn.Module):
    def __init__(self, q: QuantParams):
        super().__init__()
        self.register_buffer("scale", _channel_view(q.scale, q.axis))
        self.register_buffer("zero_point", _channel_view(q.zero_point, q.axis))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.zero_point) * self.scale


class HeadGraph(nn.Module):
    def __init__(self, preprocess: Preprocess, head: nn.Module, quantize: Quantize):
        super().__init__()
        self.preprocess, self.head, self.quantize = preprocess, head, quantize

    def forward(self, image):
        return self.quantize(self.head(self.preprocess(image)))


class AnomalyTailGraph(nn.Module):
    """codes, previous features, has_prev -> score, anomaly map, features (the next state)."""

    def __init__(self, dequantize: Dequantize, tail: nn.Module, scorer: nn.Module):
        super().__init__()
        self.dequantize, self.tail, self.scorer = dequantize, tail, scorer

    def forward(self, codes, prev_features, has_prev):
        feats = self.tail(self.dequantize(codes))
        score, amap = self.scorer(feats, prev_features, has_prev)
        return score, amap, feats


class ClassifierTailGraph(nn.Module):
    """codes -> logits: the split of a plain classifier, used to check the split itself."""

    def __init__(self, dequantize: Dequantize, tail: nn.Module):
        super().__init__()
        self.dequantize, self.tail = dequantize, tail

    def forward(self, codes):
        return self.tail(self.dequantize(codes))
