"""The head: head.onnx in onnxruntime, raw frames in, integer codes out."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge import providers as eps
from infocut.artifact import Artifact


def session(path, threads: int = 0, providers: str | list[str] = "cpu", spin: bool = True) -> ort.InferenceSession:
    """An onnxruntime session on `providers` (see edge/providers.py: `auto`, `cuda`, `tensorrt,cuda`, ...);
    `spin=False`: idle intra-op threads sleep instead of spinning (they share a small CPU with other work)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=eps.resolve(providers))


class Head:
    def __init__(self, artifact: Artifact, threads: int = 0, providers: str | list[str] = "cpu", spin: bool = True):
        self.artifact = artifact
        self.sess = session(artifact.head_path, threads, providers, spin)
        self.providers = self.sess.get_providers()  # what onnxruntime actually took
        self.size = artifact.input_size
        self.outputs = artifact.cut_names

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """(N, H, W, 3) uint8 RGB at the manifest's input size -> one (N, C, h, w) uint8 array per cut tensor,
        in the manifest's order (the order of the frame and of tail.onnx's inputs)."""
        return self.sess.run(self.outputs, {"image": images})
