"""Load a PyTorch model from a factory `package.module:function` and an optional weights file.

The factory is code the user names on the command line (like any plugin); weights are data and
are only ever read as such inside the factories (`torch.load(..., weights_only=True)`,
`np.load(..., allow_pickle=False)`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from infocut.settings import REPO, require_shared


@dataclass(frozen=True)
class Known:
    factory: str
    weights: tuple[str, ...]  # path inside the shared folder, or inside the repository if built
    input_size: tuple[int, int]  # (height, width) the anomaly pipeline feeds it
    feature_layer: str  # the stage whose features the anomaly scorer reads
    built_by: str | None = None  # `module:function(out)` that builds weights not shipped as they are

    def weights_path(self) -> Path:
        """The weights file; repo-built weights are built on first use (deterministic, from ../shared)."""
        if self.built_by is None:
            return require_shared(*self.weights)
        path = REPO.joinpath(*self.weights)
        if not path.exists():
            _, build = _factory(self.built_by)
            build(path)
        return path


KNOWN = {
    "resnet20": Known(
        "splitter.models.resnet_cifar:resnet20", ("models", "resnet_cifar10", "resnet20-12fca82f.th"), (120, 180),
        "layer2_2",
    ),
    "resnet56": Known(
        "splitter.models.resnet_cifar:resnet56", ("models", "resnet_cifar10", "resnet56-4bfd9763.th"), (120, 180),
        "layer2_8",
    ),
    "mobilenet_v2": Known(
        "splitter.models.mobilenet_v2:mobilenet_v2", ("build", "mobilenet_v2.npz"), (480, 720), "block5",
        built_by="splitter.models.tflite_import:build",
    ),
}


def resolve(spec: str, weights: str | Path | None = None) -> tuple[str, Path | None]:
    """(factory, weights path) for a known model name or a `package.module:function` spec."""
    if spec in KNOWN:
        known = KNOWN[spec]
        return known.factory, Path(weights) if weights else known.weights_path()
    if ":" not in spec:
        raise ValueError(f"model {spec!r}: give a known name ({', '.join(KNOWN)}) or package.module:function")
    return spec, Path(weights) if weights else None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _factory(factory: str):
    module_name, func_name = factory.split(":", 1)
    try:
        module = importlib.import_module(module_name)
        return module, getattr(module, func_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load model factory {factory!r}: {e}") from e


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    factory, path = resolve(spec, weights)
    _, func = _factory(factory)
    model = func(path) if path is not None else func()
    return model.eval()


def normalization(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) in 0..1 units the model was trained with: the factory module's MEAN/STD, else ImageNet's."""
    factory = KNOWN[spec].factory if spec in KNOWN else spec
    module, _ = _factory(factory)
    return tuple(getattr(module, "MEAN", IMAGENET_MEAN)), tuple(getattr(module, "STD", IMAGENET_STD))
