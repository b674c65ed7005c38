"""The torch modules that become head.onnx and tail.onnx.

The head takes raw uint8 RGB frames (N, H, W, 3) and ends in the quantizer, so the edge does
nothing but resize, run the graph and entropy-code integer codes. The tail starts with the
dequantizer. The quantizer ops match codec.quantizer bit for bit (Div, Round half-to-even,
Add, Clip, Cast), which tests/test_split.py checks. At a cut where several tensors cross (inside
a residual block) each has its own quantizer: the head returns their codes as separate outputs
and the tail takes them as separate inputs, in the cut's order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from codec import QuantParams


def _channel_view(values, axis, ndim: int) -> torch.Tensor:
    """Per-channel values shaped to broadcast over (N, C, ...) of rank `ndim`; a scalar per tensor."""
    t = torch.tensor(np.array(values, dtype=np.float32))
    return t.view(1, -1, *[1] * (ndim - 2)) if axis is not None else t.view(())


def _listed(modules) -> nn.ModuleList:
    """One (de)quantizer per cut tensor; a lone module stands for a single-tensor cut (bench/ passes nn.Identity)."""
    return nn.ModuleList(modules if isinstance(modules, (list, tuple, nn.ModuleList)) else [modules])


class Preprocess(nn.Module):
    """uint8 NHWC RGB -> normalized float NCHW, as the model was trained."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std


class Quantize(nn.Module):
    """float (N, C, ...) -> uint8 codes; `ndim` is the rank of the batched tensor (4 for N, C, H, W)."""

    def __init__(self, q: QuantParams, ndim: int = 4):
        super().__init__()
        self.register_buffer("scale", _channel_view(q.scale, q.axis, ndim))
        self.register_buffer("zero_point", _channel_view(q.zero_point, q.axis, ndim))
        self.qmax = float(2**q.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, 0.0, self.qmax).to(torch.uint8)


class Dequantize(nn.Module):
    def __init__(self, q: QuantParams, ndim: int = 4):
        super().__init__()
        self.register_buffer("scale", _channel_view(q.scale, q.axis, ndim))
        self.register_buffer("zero_point", _channel_view(q.zero_point, q.axis, ndim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.zero_point) * self.scale


class HeadGraph(nn.Module):
    """image -> the codes of each cut tensor: one tensor for a single-tensor cut, else a tuple in cut order."""

    def __init__(self, preprocess: Preprocess, head: nn.Module, quantize: list[Quantize]):
        super().__init__()
        self.preprocess, self.head, self.quantize = preprocess, head, _listed(quantize)

    def forward(self, image):
        x = self.head(self.preprocess(image))
        codes = tuple(q(t) for q, t in zip(self.quantize, x if isinstance(x, tuple) else (x,), strict=True))
        return codes[0] if len(codes) == 1 else codes


class _TailGraph(nn.Module):
    def __init__(self, dequantize: list[Dequantize], tail: nn.Module):
        super().__init__()
        self.dequantize, self.tail = _listed(dequantize), tail

    def features(self, *codes):
        """The tail's output on the codes of each cut tensor, given as separate arguments in cut order."""
        return self.tail(*(d(c) for d, c in zip(self.dequantize, codes, strict=True)))


class AnomalyTailGraph(_TailGraph):
    """codes of each cut tensor..., previous features, has_prev -> score, anomaly map, features (the next state)."""

    def __init__(self, dequantize: list[Dequantize], tail: nn.Module, scorer: nn.Module):
        super().__init__(dequantize, tail)
        self.scorer = scorer

    def forward(self, *inputs):
        *codes, prev_features, has_prev = inputs
        feats = self.features(*codes)
        score, amap = self.scorer(feats, prev_features, has_prev)
        return score, amap, feats


class ClassifierTailGraph(_TailGraph):
    """codes of each cut tensor... -> logits: the split of a plain classifier, used to check the split itself."""

    def forward(self, *codes):
        return self.features(*codes)
