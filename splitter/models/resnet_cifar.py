"""CIFAR-10 ResNet-20/56 (He et al. 2016, option-A shortcuts), matching the akamaster weights.

The network is fully convolutional up to the global pool, so it runs on frames of any size; the
splitter cuts it between blocks and the anomaly scorer reads the last stage's feature map.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Trained on inputs normalized with ImageNet's statistics (the splitter reads MEAN/STD from here).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Classifier(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _resnet(depth: int, weights: str | os.PathLike | None) -> nn.Sequential:
    """A flat Sequential of named stages: stem, layer1.0 … layer3.N, classifier."""
    n = (depth - 2) // 6
    stages: list[tuple[str, nn.Module]] = [("stem", Stem())]
    in_planes = 16
    for s, planes in enumerate((16, 32, 64), start=1):
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            stages.append((f"layer{s}_{b}", BasicBlock(in_planes, planes, stride)))
            in_planes = planes
    stages.append(("classifier", Classifier()))
    model = nn.Sequential(OrderedDict(stages))
    if weights is not None:
        model.load_state_dict(_remap_akamaster(_load_state(weights), depth))
    return model.eval()


def _load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    return {k.removeprefix("module."): v for k, v in state.items()}


def _remap_akamaster(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Map akamaster's names (conv1, layer1.0.conv1, linear) onto the flat stage names."""
    out = {}
    for key, value in state.items():
        if key.startswith("conv1."):
            out["stem.conv." + key[len("conv1."):]] = value
        elif key.startswith("bn1."):
            out["stem.bn." + key[len("bn1."):]] = value
        elif key.startswith("linear."):
            out["classifier." + key] = value
        elif key.startswith("layer"):
            stage, block, rest = key.split(".", 2)
            out[f"{stage}_{block}.{rest}"] = value
        else:
            out[key] = value
    return out


def resnet20(weights: str | os.PathLike | None = None) -> nn.Sequential:
    return _resnet(20, weights)


def resnet56(weights: str | os.PathLike | None = None) -> nn.Sequential:
    return _resnet(56, weights)
