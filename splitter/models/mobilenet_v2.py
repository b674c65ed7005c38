"""MobileNetV2 1.0 (Sandler et al. 2018) as TensorFlow built it, for the ImageNet weights at hand.

The weights come from Google's quantization-aware trained TFLite file (see tflite_import.py):
BatchNorm is folded into each conv's weights and bias, so the convs carry a bias and there is no
BN. TensorFlow pads 'SAME', which for a stride-2 conv on an even size puts the extra row and
column at the bottom and right only; PyTorch's symmetric padding would shift every feature map
by half a pixel, so the padding is computed from the input size in forward. The network is
convolutional up to the global pool and runs at any frame size.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The TFLite input is uint8 with scale 1/128 and zero point 128: x -> (x - 128) / 128, in [-1, 1).
# In the 0..1 convention of splitter.graphs.Preprocess, which computes (x - mean*255) / (std*255):
MEAN = (128 / 255,) * 3
STD = (128 / 255,) * 3

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper
SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'SAME': the odd pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv(nn.Conv2d):
    """A conv with a bias, TF 'SAME' padding and optionally the ReLU6 TFLite fused into it."""

    fx_leaf = True  # the padding depends on the input size: one op in splitter.cuts' graph

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu6: bool = True):
        super().__init__(cin, cout, kernel, stride, groups=groups, bias=True)
        self.relu6 = relu6
        self.frozen_padding: tuple[int, int, int, int] | None = None

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom), F.pad's order, for an input of this size."""
        top, bottom = same_padding(height, self.kernel_size[0], self.stride[0])
        left, right = same_padding(width, self.kernel_size[1], self.stride[1])
        return left, right, top, bottom

    def freeze_padding(self, size: tuple[int, int] | None) -> None:
        """Pad as for inputs of `size` (None: from each input's size). An export freezes it so that the graph pads
        by constants, which splitter.onnxgraph folds into the conv, rather than by sizes read at run time."""
        self.frozen_padding = None if size is None else self.padding_for(int(size[0]), int(size[1]))

    def forward(self, x):
        if self.kernel_size != (1, 1) or self.stride != (1, 1):
            pads = self.frozen_padding or self.padding_for(int(x.shape[-2]), int(x.shape[-1]))
            x = F.pad(x, pads)
        x = self._conv_forward(x, self.weight, self.bias)
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; the input is added back when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = Conv(cin, hidden) if expansion != 1 else nn.Identity()
        self.depthwise = Conv(hidden, hidden, 3, stride, groups=hidden)
        self.project = Conv(hidden, cout, relu6=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class Classifier(nn.Module):
    """Global average pool, then the 1x1 conv to 1001 logits (index 0 = background)."""

    def __init__(self, cin: int = 1280, num_classes: int = 1001):
        super().__init__()
        self.conv = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        return torch.flatten(self.conv(x.mean((2, 3), keepdim=True)), 1)


def mobilenet_v2(weights: str | os.PathLike | None = None) -> nn.Sequential:
    """A flat Sequential of named stages: stem, block0 … block16, head, classifier.

    `weights` is the npz written by splitter.models.tflite_import (plain arrays, no pickle).
    """
    stages: list[tuple[str, nn.Module]] = [("stem", Conv(3, 32, 3, 2))]
    cin = 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stages.append((f"block{len(stages) - 1}", InvertedResidual(cin, c, s if i == 0 else 1, t)))
            cin = c
    stages += [("head", Conv(cin, 1280)), ("classifier", Classifier())]
    model = nn.Sequential(OrderedDict(stages))
    if weights is not None:
        with np.load(Path(weights), allow_pickle=False) as npz:
            model.load_state_dict({k: torch.from_numpy(npz[k]) for k in npz.files})
    return model.eval()
