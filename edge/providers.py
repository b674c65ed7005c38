"""Which onnxruntime execution providers run the head (edge) and the tail (cloud).

`auto` takes the best this onnxruntime build offers, TensorRT > CUDA > CPU; naming a provider that
the build lacks is a startup error that lists what it has, never a silent fall back to the CPU (a
Jetson running its head on the CPU looks healthy but drops frames).
"""

from __future__ import annotations

import onnxruntime as ort

NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = ("tensorrt", "cuda", "cpu")


class ProviderError(ValueError):
    """A provider request this onnxruntime cannot serve."""


def parse(spec: str) -> list[str]:
    """`auto` or a comma list of tensorrt|cuda|cpu -> short names (validated, order kept, no duplicates)."""
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    if not names:
        raise ProviderError("providers: give auto or a comma list of tensorrt, cuda, cpu")
    if "auto" in names:
        if len(names) > 1:
            raise ProviderError(f"providers: auto stands alone, got {spec!r}")
        return ["auto"]
    bad = [n for n in names if n not in NAMES]
    if bad:
        raise ProviderError(f"providers: unknown {', '.join(bad)} (choose auto or from {', '.join(NAMES)})")
    return list(dict.fromkeys(names))


def resolve(spec: str | list[str] = "auto", available: list[str] | None = None) -> list[str]:
    """onnxruntime provider names for a request; the CPU always comes last as the fallback for unsupported nodes."""
    names = parse(spec) if isinstance(spec, str) else parse(",".join(spec))
    have = ort.get_available_providers() if available is None else available
    if names == ["auto"]:
        names = [n for n in PREFERENCE if NAMES[n] in have]
    missing = [n for n in names if NAMES[n] not in have]
    if missing:
        raise ProviderError(f"execution provider {', '.join(missing)} not available in this onnxruntime "
                            f"(it has: {', '.join(have) or 'none'}); install onnxruntime-gpu for cuda/tensorrt "
                            "(deploy/README.md) or pass --providers cpu")
    out = [NAMES[n] for n in names]
    return out if NAMES["cpu"] in out else [*out, NAMES["cpu"]]


def short(providers: list[str]) -> str:
    """`TensorrtExecutionProvider, CPUExecutionProvider` -> `tensorrt,cpu` (logs, metric labels)."""
    back = {v: k for k, v in NAMES.items()}
    return ",".join(back.get(p, p) for p in providers)
