"""Load a PyTorch model from a factory `package.module:function` and an optional weights file.

The factory is code the user names on the command line (like any plugin); weights are data and
are only ever read with `torch.load(..., weights_only=True)` inside the factories.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from infocut.settings import require_shared


@dataclass(frozen=True)
class Known:
    factory: str
    weights: tuple[str, ...]  # path inside the shared folder
    input_size: tuple[int, int]  # (height, width) the anomaly pipeline feeds it


KNOWN = {
    "resnet20": Known(
        "splitter.models.resnet_cifar:resnet20", ("models", "resnet_cifar10", "resnet20-12fca82f.th"), (120, 180)
    ),
    "resnet56": Known(
        "splitter.models.resnet_cifar:resnet56", ("models", "resnet_cifar10", "resnet56-4bfd9763.th"), (120, 180)
    ),
}


def resolve(spec: str, weights: str | Path | None = None) -> tuple[str, Path | None]:
    """(factory, weights path) for a known model name or a `package.module:function` spec."""
    if spec in KNOWN:
        known = KNOWN[spec]
        return known.factory, Path(weights) if weights else require_shared(*known.weights)
    if ":" not in spec:
        raise ValueError(f"model {spec!r}: give a known name ({', '.join(KNOWN)}) or package.module:function")
    return spec, Path(weights) if weights else None


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    factory, path = resolve(spec, weights)
    module_name, func_name = factory.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load model factory {factory!r}: {e}") from e
    model = func(path) if path is not None else func()
    return model.eval()
