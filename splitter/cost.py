"""What a head costs on an edge device, and what a frame costs end to end over a link.

The splitter picks a cut by trading what crosses the link against what the edge must compute, so
it needs for every candidate cut the head's arithmetic, weights and working memory
(`head_costs`), a speed for the device relative to the machine the splitter measures on
(`devices.json`, `profile_device`), the measured time of an ONNX graph (`time_onnx`) and a model of
the pipeline's latency and throughput (`predict_latency`).

FLOP convention (`head_costs`), per frame at batch 1:
  * Conv (any groups, incl. depthwise) and Linear/matmul: 2 x MACs; a bias starts the
    accumulator and costs nothing.
  * Elementwise ops (activations, adds, multiplies, BatchNorm, explicit F.pad): one op per
    output element; an activation fused into a conv module (attribute `relu6`) likewise.
  * Reductions (pooling, mean, sum): one op per *input* element, since every input is read and
    accumulated once (counting output elements would make a global pool almost free).
  * Data movement (views, flatten, getitem/slicing, cat, Identity, Dropout) and padding inside
    a conv (implicit, or the TF-SAME padding of the MobileNetV2 leaf): free.
Parameters: those of every module (or get_attr tensor) the head uses, each tensor once; buffers
(BatchNorm statistics) are not parameters and fold into the convs on export.
Peak activation memory: a tensor is live from the op that makes it to its last reader, or to the
head's end if it crosses the cut (the input image included); views (Identity, flatten, reshape)
share their input's memory. The peak is the largest live total at any op of the head, in float32
bytes; it ignores the runtime's scratch buffers (im2col, workspace).

Only `head_costs` needs torch; everything else here runs on an edge device with numpy and
onnxruntime (plus onnx to build the reference graph, or a reference .onnx written beforehand):
run `python splitter/cost.py profile NAME` there.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEVICES_JSON = Path(__file__).with_name("devices.json")
FLOAT_BYTES = 4

# ---------------------------------------------------------------------------------------------
# head costs (torch)

_FREE = {
    "getitem", "getattr", "flatten", "view", "reshape", "size", "dim", "contiguous", "permute",
    "transpose", "squeeze", "unsqueeze", "expand", "expand_as", "cat", "stack", "chunk", "split",
    "to", "float", "type", "clone", "detach", "dropout", "identity", "unflatten",
}
_ALIAS = {"identity", "dropout", "flatten", "unflatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze",
          "detach"}  # outputs that share their input's memory (liveness counts them as the input)
_REDUCE = ("pool", "mean", "sum", "amax", "amin")
_MATMUL = {"matmul", "mm", "bmm"}


@dataclass(frozen=True)
class HeadCost:
    """The cost of computing `ops[:index]` for one frame; `tail_flops` is what is left up to `upto`."""

    name: str
    index: int
    flops: int
    tail_flops: int
    params: int  # parameters of the modules the head calls, each counted once
    param_bytes: int  # as float32
    peak_bytes: int  # peak activation memory (float32), input image and cut tensors included

    @property
    def total_flops(self) -> int:
        return self.flops + self.tail_flops


def _numel(meta) -> int:
    """Elements of a node's output(s) from ShapeProp metadata; 0 for non-tensors (e.g. size())."""
    if meta is None:
        return 0
    if hasattr(meta, "shape"):
        return math.prod(meta.shape)
    if isinstance(meta, (tuple, list)):
        return sum(_numel(m) for m in meta)
    if isinstance(meta, dict):
        return sum(_numel(m) for m in meta.values())
    return 0


def _name(node) -> str:
    """The op's name for the tables above: 'relu', 'add', 'adaptive_avg_pool2d', 'mean', …"""
    if node.op == "call_method":
        return node.target
    name = getattr(node.target, "__name__", str(node.target))
    return name.strip("_").removesuffix("_with_indices").lower()


def _op_flops(gm, node) -> int:
    from torch import nn

    out = _numel(node.meta.get("tensor_meta"))
    first = node.args[0] if node.args else None
    inp = _numel(first.meta.get("tensor_meta")) if hasattr(first, "meta") else 0
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.modules.conv._ConvNd):
            k = math.prod(m.kernel_size)
            if m.transposed:  # every input element is scattered through a (Cout/g, k) window
                macs = inp * (m.out_channels // m.groups) * k
            else:
                macs = out * (m.in_channels // m.groups) * k
            return 2 * macs + (out if getattr(m, "relu6", False) else 0)
        if isinstance(m, nn.Linear):
            return 2 * out * m.in_features
        if isinstance(m, (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout)):
            return 0
        kind = type(m).__name__.lower()
        if any(r in kind for r in _REDUCE):
            return inp
        return out  # BatchNorm, activations, any other leaf: elementwise
    if node.op in ("call_function", "call_method"):
        name = _name(node)
        if name in _FREE:
            return 0
        if name in _MATMUL:
            return 2 * out * first.meta["tensor_meta"].shape[-1]
        if name == "linear":
            return 2 * out * first.meta["tensor_meta"].shape[-1]
        if any(r in name for r in _REDUCE):
            return inp
        return out
    return 0  # get_attr


def _alias_of(gm, node):
    """The node whose memory `node`'s output shares (a view or no-op), else None."""
    first = node.args[0] if node.args else None
    if not hasattr(first, "meta"):
        return None
    if node.op == "call_module":
        name = type(gm.get_submodule(node.target)).__name__.lower()
    elif node.op in ("call_function", "call_method"):
        name = _name(node)
    else:
        return None
    return first if name in _ALIAS else None


def _params(gm, node) -> list:
    """The parameter tensors an op reads: a called module's, or a get_attr'd tensor."""
    if node.op == "call_module":
        return list(gm.get_submodule(node.target).parameters())
    if node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return [obj] if hasattr(obj, "numel") else []
    return []


@dataclass(frozen=True)
class _Profile:
    order: list
    gm: object
    flops: list[int]  # cumulative: flops[k] = FLOPs of ops[:k]
    params: list[int]  # cumulative, each tensor once
    peak: list[int]  # peak[k] = peak live elements while computing ops[:k]
    end: int  # ops[:end] is the model up to `upto`


def _profile(model, input_size: tuple[int, int], upto: str | None) -> _Profile:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    from splitter.cuts import _last_of, ops, trace

    gm = trace(model)
    was_training = model.training
    model.eval()  # ShapeProp runs the model: BatchNorm must not update its statistics
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, 3, *input_size))
    finally:
        model.train(was_training)
    order = ops(gm)
    n = len(order)
    pos = {node: i for i, node in enumerate(order)}
    inputs = [node for node in gm.graph.nodes if node.op == "placeholder"]

    flops, params, seen = [0], [0], set()
    for node in order:
        flops.append(flops[-1] + _op_flops(gm, node))
        new = [p for p in _params(gm, node) if id(p) not in seen]
        seen.update(id(p) for p in new)
        params.append(params[-1] + sum(p.numel() for p in new))

    # Liveness: a tensor made at position p (the input at -1) is live from p through its last
    # reader (the graph output reads at n). While the head computes op i < k a tensor is live at
    # i iff p <= i <= last_use: one that crosses a cut at k has last_use >= k, so it stays live to
    # the head's end. Hence the head's peak is a prefix maximum of the per-op live totals.
    # A view (flatten, Identity, …) is its input's memory: it extends the input's life, adds nothing.
    last_use, root = {}, {}
    for node in gm.graph.nodes:
        at = pos.get(node, n)  # output node and anything after the ops read at n
        for a in node.all_input_nodes:
            last_use[a] = max(last_use.get(a, -1), at)
    for node in order:
        src = _alias_of(gm, node)
        if src is not None:
            root[node] = root.get(src, src)
            last_use[root[node]] = max(last_use.get(root[node], -1), last_use.get(node, pos[node]))
    delta = [0] * (n + 2)
    for node in inputs + order:
        size = 0 if node in root else _numel(node.meta.get("tensor_meta"))
        start = pos.get(node, -1)
        stop = max(last_use.get(node, start), start)
        delta[max(start, 0)] += size
        delta[min(stop, n) + 1] -= size
    peak, live, best = [0], 0, 0
    for i in range(n):
        live += delta[i]
        best = max(best, live)
        peak.append(best)
    end = _last_of(order, upto) if upto is not None else n
    return _Profile(order, gm, flops, params, peak, end)


def head_costs(model, input_size: tuple[int, int], cuts, upto: str | None = None) -> list[HeadCost]:
    """The cost of each cut's head for a (height, width) input, from one trace of the model.

    `upto` is the stage the tail ends at (as in list_cuts): `tail_flops` counts the ops after
    the cut up to it. Counts follow the convention in the module docstring.
    """
    from splitter.cuts import _crossing_names

    prof = _profile(model, input_size, upto)
    out = []
    for cut in cuts:
        k = cut.index
        if not 0 < k <= prof.end or [t.name for t in cut.tensors] != _crossing_names(prof.gm, prof.order, k):
            raise ValueError(f"cut {cut.name} does not belong to this model (or lies past {upto!r})")
        out.append(HeadCost(
            cut.name, k, prof.flops[k], prof.flops[prof.end] - prof.flops[k], prof.params[k],
            FLOAT_BYTES * prof.params[k], FLOAT_BYTES * prof.peak[k],
        ))
    return out


def model_cost(model, input_size: tuple[int, int], upto: str | None = None) -> HeadCost:
    """The whole model up to `upto` as one head (no cut): total FLOPs, parameters, peak memory."""
    prof = _profile(model, input_size, upto)
    k = prof.end
    return HeadCost("all", k, prof.flops[k], 0, prof.params[k], FLOAT_BYTES * prof.params[k],
                    FLOAT_BYTES * prof.peak[k])


# ---------------------------------------------------------------------------------------------
# timing (onnxruntime; no torch)


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def time_onnx(path_or_bytes, feeds: dict, runs: int = 20, warmup: int = 3, threads: int = 0) -> float:
    """Median wall ms of one session.run at batch 1 on the CPU (the median shrugs off the odd
    scheduler hiccup; warm-up runs absorb allocation and kernel selection)."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    sess = _session(path_or_bytes, threads)
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


# The reference workload: MobileNetV2 1.0 (Table 2 of the paper) at 224x224, float32, the network
# public CPU benchmarks quote, so a device's published figure and our measurement describe the same
# arithmetic. Built with onnx.helper (no torch: it runs on edge devices); weights are a fixed
# formula, which timing does not care about but keeps the graph byte-identical everywhere.
REFERENCE_INPUT = (1, 3, 224, 224)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def reference_model() -> bytes:
    """The reference graph as ONNX bytes (opset 17, IR 8 so that older onnxruntime builds load it)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def tensor(name: str, shape: tuple[int, ...], scale: float):
        n = math.prod(shape)
        values = (np.cos(np.arange(n, dtype=np.float64) * 0.7548776662) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(values.reshape(shape), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> str:
        i = len(nodes)
        w = tensor(f"w{i}", (cout, cin // groups, k, k), (cin // groups * k * k) ** -0.5)
        b = tensor(f"b{i}", (cout,), 0.01)
        y = f"y{i}"
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4, group=groups))
        if not act:
            return y
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [y + "r"]))  # ReLU6
        return y + "r"

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, cin = conv("x", 3, 32, 3, 2), 32
    for t, c, reps, s in _SETTINGS:
        for r in range(reps):
            stride = s if r == 0 else 1
            h = conv(x, cin, cin * t) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, groups=cin * t)
            h = conv(h, cin * t, c, act=False)
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [h, x], [h + "a"]))
                h += "a"
            x, cin = h, c
    x = conv(x, cin, 1280)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    logits = conv("pool", 1280, 1001, act=False)
    nodes.append(helper.make_node("Flatten", [logits], ["logits"]))
    graph = helper.make_graph(
        nodes, "infocut_reference_mobilenet_v2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(REFERENCE_INPUT))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1001])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="infocut")
    model.ir_version = 8
    return model.SerializeToString()


def reference_input() -> np.ndarray:
    return np.linspace(-1, 1, math.prod(REFERENCE_INPUT), dtype=np.float32).reshape(REFERENCE_INPUT)


def measure_reference(threads: int = 0, runs: int = 30, warmup: int = 5, model=None) -> float:
    """Median ms of the reference workload here. `model`: a reference .onnx written earlier
    (`write-reference`), for a device that has onnxruntime but not onnx."""
    return time_onnx(model if model is not None else reference_model(), {"x": reference_input()},
                     runs=runs, warmup=warmup, threads=threads)


# ---------------------------------------------------------------------------------------------
# devices


def _table(path: Path = DEVICES_JSON) -> dict:
    return json.loads(Path(path).read_text())


def _check(name: str, profile: dict) -> dict:
    f = profile.get("speed_factor")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
        raise ValueError(f"device {name!r}: speed_factor must be a positive number, got {f!r}")
    if profile.get("source") not in ("declared", "measured"):
        raise ValueError(f"device {name!r}: source must be 'declared' or 'measured', got {profile.get('source')!r}")
    return {"name": name, **profile, "speed_factor": float(f)}


def load_device(name_or_path: str | os.PathLike) -> dict:
    """A device profile {name, speed_factor, source, note, …} by known name or from a JSON file
    (one profile, as profile_device writes it). speed_factor: how many times slower than the
    reference machine the device runs the same onnxruntime graph."""
    devices = _table()["devices"]
    key = str(name_or_path)
    if key in devices:
        return _check(key, devices[key])
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"no device profile file {path}")
        profile = json.loads(path.read_text())
        return _check(profile.get("name", path.stem), profile)
    raise ValueError(f"unknown device {key!r}: give one of {', '.join(devices)} or a path to a JSON profile")


def on_device(ms_here: float, device: dict | str) -> float:
    """A time measured on the reference machine, scaled to the device."""
    return ms_here * (load_device(device) if isinstance(device, str) else device)["speed_factor"]


def profile_device(name: str, threads: int = 0, model=None, reference_ms: float | None = None,
                   repeats: int = 3) -> dict:
    """A measured profile of the machine this runs on: its measure_reference() over the reference
    machine's (devices.json "reference_ms"). Run it on the edge device, idle; it takes the lowest
    of `repeats` medians, since other load only ever adds time. Needs numpy + onnxruntime (+ onnx,
    or `model`, a reference .onnx written by `write-reference` elsewhere)."""
    import onnxruntime as ort

    ref = reference_ms if reference_ms is not None else _table()["reference_ms"]
    graph = model if model is not None else reference_model()
    runs = [measure_reference(threads=threads, model=graph) for _ in range(max(repeats, 1))]
    ms = min(runs)
    return {
        "name": name,
        "speed_factor": round(ms / ref, 4),
        "source": "measured",
        "note": (f"measure_reference() = {ms:.2f} ms here (medians {', '.join(f'{r:.2f}' for r in runs)}) vs "
                 f"{ref:.2f} ms on the reference machine; onnxruntime {ort.__version__}, {platform.machine()}, "
                 f"{os.cpu_count()} CPUs, threads={threads or 'default'}"),
        "reference_ms": round(ms, 3),
    }


# ---------------------------------------------------------------------------------------------
# latency model


@dataclass(frozen=True)
class Latency:
    """One frame through the split pipeline, in ms. total_ms is the time from a frame entering the
    head to its score coming back to the edge: compute, the coded frame's serialization at the
    link rate, and one round trip of propagation (the score on the way back is a few bytes)."""

    head_ms: float
    encode_ms: float
    transfer_ms: float
    rtt_ms: float
    decode_ms: float
    tail_ms: float
    total_ms: float

    @property
    def fps_bound(self) -> float:
        """Frames per second the pipeline can sustain at best: its stages (head, encode, link,
        decode, tail) overlap across frames, so the slowest one sets the rate. Propagation delay
        does not limit throughput. An upper bound: head and encoder may share the edge's cores."""
        slowest = max(self.head_ms, self.encode_ms, self.transfer_ms, self.decode_ms, self.tail_ms)
        return math.inf if slowest <= 0 else 1000.0 / slowest


def predict_latency(head_ms: float, bytes_per_frame: float, bandwidth_bps: float, rtt_ms: float,
                    decode_ms: float = 0, tail_ms: float = 0, encode_ms: float = 0) -> Latency:
    if bandwidth_bps <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_bps}")
    if min(head_ms, bytes_per_frame, rtt_ms, decode_ms, tail_ms, encode_ms) < 0:
        raise ValueError("times and sizes must not be negative")
    transfer = bytes_per_frame * 8 / bandwidth_bps * 1000
    total = head_ms + encode_ms + transfer + rtt_ms + decode_ms + tail_ms
    return Latency(head_ms, encode_ms, transfer, rtt_ms, decode_ms, tail_ms, total)


_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30,
           "ti": 2.0**40}


def parse_bandwidth(text: str | float) -> float:
    """Bits per second from '5Mbit', '5 Mbit/s', '500kbit', '1Gbit', '2.5MB/s', '20Mbps', '1e6'.

    A lowercase b or 'bit' means bits, an uppercase B or 'byte' bytes ('MB/s' = megabytes per
    second, 'Mb'/'Mbit'/'Mbps' = megabits); prefixes are decimal (k = 1000), Ki/Mi/Gi binary; a
    bare number is bits per second.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(_NUMBER + r"([A-Za-z]*?)(?:ps|\s*/\s*s)?\s*", str(text))
        if not m:
            raise ValueError(f"bandwidth {text!r}: expected a number and a unit such as 5Mbit, 2.5MB/s or 1e6")
        value, unit = float(m.group(1)), m.group(2)
    bits = 1.0
    if unit:
        um = re.fullmatch(r"([kKmMgGtT]i?)?([A-Za-z]+)", unit)
        body = um.group(2) if um else ""
        if body == "B" or body.lower() in ("byte", "bytes"):
            bits = 8.0
        elif body != "b" and body.lower() not in ("bit", "bits"):
            raise ValueError(f"bandwidth {text!r}: unknown unit {unit!r} (bit or b for bits, B or byte for bytes, "
                             "after k, M, G, T or Ki, Mi, Gi; optionally /s or ps)")
        value *= _PREFIX[(um.group(1) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"bandwidth {text!r} must be a positive finite rate")
    return value * bits


_DURATION = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3, "min": 60000.0}


def parse_duration(text: str | float) -> float:
    """Milliseconds from '20ms', '0.02s', '500us' or a bare number (taken as ms)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(_NUMBER + r"([a-zµ]*)\s*", str(text))
        if not m or m.group(2) not in _DURATION:
            raise ValueError(f"duration {text!r}: expected a number with ms, s or us, such as 20ms or 0.02s")
        value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration {text!r} must be a non-negative finite time")
    return value * _DURATION[unit]


def _main(argv: list[str] | None = None) -> None:
    """`python splitter/cost.py profile NAME [--threads N] [--model ref.onnx] [-o out.json]` on a
    device; `python splitter/cost.py write-reference ref.onnx` where onnx is installed."""
    import argparse

    parser = argparse.ArgumentParser(prog="splitter/cost.py", description=_main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    prof = sub.add_parser("profile", help="measure this machine against the reference")
    prof.add_argument("name")
    prof.add_argument("--threads", type=int, default=0)
    prof.add_argument("--model", help="reference .onnx (when onnx is not installed here)")
    prof.add_argument("--reference-ms", type=float, help="override devices.json's reference_ms")
    prof.add_argument("-o", "--out", help="write the profile here (load it with load_device(path))")
    ref = sub.add_parser("reference", help="print this machine's measure_reference() in ms")
    ref.add_argument("--threads", type=int, default=0)
    write = sub.add_parser("write-reference", help="write the reference graph to an .onnx file")
    write.add_argument("path")
    args = parser.parse_args(argv)
    if args.cmd == "profile":
        profile = profile_device(args.name, args.threads, args.model, args.reference_ms)
        text = json.dumps(profile, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.cmd == "reference":
        print(f"{measure_reference(threads=args.threads):.3f}")
    else:
        Path(args.path).write_bytes(reference_model())


if __name__ == "__main__":
    _main()
