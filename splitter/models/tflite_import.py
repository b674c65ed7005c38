"""MobileNetV2 weights out of Google's quantized TFLite file, as float32 arrays for mobilenet_v2.py.

The only ImageNet model at hand is `mobilenet_v2_1.0_224_quant.tflite` (quantization-aware trained,
BatchNorm folded into each conv's weights and bias, ReLU6 fused). Dequantizing its weights gives
the float network it was trained as; the activation quantization is simply not reproduced. Only the
flatbuffer is parsed (the `tflite` package): nothing in it is executed.

    python -m splitter.models.tflite_import --out build/mobilenet_v2.npz
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from infocut.settings import REPO, require_shared

SOURCE = ("models", "mobilenet_imagenet_tflite", "mobilenet_v2_1.0_224_quant.tflite")
DEFAULT_OUT = REPO / "build" / "mobilenet_v2.npz"

_CONVS = {"CONV_2D", "DEPTHWISE_CONV_2D"}


def _dtypes():
    import tflite

    t = tflite.TensorType
    return {t.UINT8: np.uint8, t.INT8: np.int8, t.INT32: np.int32, t.FLOAT32: np.float32}


def _scope_name(scope: str) -> str:
    """TF scope of a conv -> our parameter prefix (MobilenetV2/expanded_conv_3/expand -> block3.expand)."""
    scope = scope.removeprefix("MobilenetV2/")
    if scope == "Conv":
        return "stem"
    if scope == "Conv_1":
        return "head"
    if scope == "Logits/Conv2d_1c_1x1":
        return "classifier.conv"
    m = re.fullmatch(r"expanded_conv(?:_(\d+))?/(expand|depthwise|project)", scope)
    if m is None:
        raise ValueError(f"unexpected conv scope {scope!r} in the TFLite graph")
    return f"block{int(m.group(1) or 0)}.{m.group(2)}"


def _quant(tensor) -> tuple[np.ndarray, np.ndarray, int] | None:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
    return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64), q.QuantizedDimension()


def _dequantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero_point) * scale, per tensor or per channel along `axis`."""

    def along(v: np.ndarray) -> np.ndarray:
        return v.reshape([v.size if d == axis and v.size > 1 else 1 for d in range(values.ndim)])

    return ((values.astype(np.float64) - along(zero_point)) * along(scale)).astype(np.float32)


def _tensor(model, graph, index: int) -> np.ndarray:
    t = graph.Tensors(index)
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, int):  # an empty buffer: an activation, not a constant
        raise ValueError(f"tensor {t.Name().decode()!r} holds no constant data")
    return np.frombuffer(data.tobytes(), dtype=_dtypes()[t.Type()]).reshape(t.ShapeAsNumpy())


def _float(model, graph, index: int) -> np.ndarray:
    values = _tensor(model, graph, index)
    q = _quant(graph.Tensors(index))
    return values.astype(np.float32) if q is None or values.dtype == np.float32 else _dequantize(values, *q)


def _float_bias(model, graph, op) -> np.ndarray:
    """int32 bias: it lives in the accumulator's scale, input_scale * weight_scale (what the kernel uses)."""
    values = _tensor(model, graph, op.Inputs(2))
    if values.dtype == np.float32:
        return values
    in_scale, _, _ = _quant(graph.Tensors(op.Inputs(0)))
    w_scale, _, _ = _quant(graph.Tensors(op.Inputs(1)))
    return _dequantize(values, in_scale * w_scale, np.zeros(1, np.int64), 0)


def _op_name(model, op) -> str:
    import tflite

    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # old files fill only the deprecated field
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    return names[builtin]


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{our parameter name: float32 array in PyTorch layout} for every conv of the TFLite graph."""
    import tflite

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    out: dict[str, np.ndarray] = {}
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        kind = _op_name(model, op)
        if kind not in _CONVS:
            continue
        # the weights' name leads with their scope: "MobilenetV2/Conv/Conv2D_Fold;…"
        scope = graph.Tensors(op.Inputs(1)).Name().decode().split(";")[0].rsplit("/", 1)[0]
        name = _scope_name(scope)
        if name + ".weight" in out:
            raise ValueError(f"two convs map onto {name!r}")
        # TFLite conv weights are OHWI, depthwise 1HW(C*multiplier); torch wants OIHW, C1HW.
        w = _float(model, graph, op.Inputs(1)).transpose((3, 0, 1, 2) if kind == "DEPTHWISE_CONV_2D" else (0, 3, 1, 2))
        out[name + ".weight"] = np.ascontiguousarray(w)
        out[name + ".bias"] = _float_bias(model, graph, op)
    return out


def build(out: str | os.PathLike = DEFAULT_OUT, source: str | os.PathLike | None = None) -> Path:
    """Write the float32 weights as an npz of plain arrays, byte-identical on every build.

    Fixed entry order and timestamps (np.savez stamps the time): the manifest records the weights'
    sha256, so a rebuilt npz must not change the artifact id.
    """
    arrays = read_weights(Path(source) if source else require_shared(*SOURCE))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            with zf.open(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, arrays[name], allow_pickle=False)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="npz to write (default: %(default)s)")
    parser.add_argument("--tflite", help="source .tflite (default: the shared quantized MobileNetV2)")
    args = parser.parse_args(argv)
    path = build(args.out, args.tflite)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
