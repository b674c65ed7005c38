"""torch -> ONNX as every graph of infocut is exported: static padding folded into the convs.

MobileNetV2's TensorFlow 'SAME' padding depends on the input size. Exported as is, each 3x3 conv gets a
Pad whose amounts are computed from the input's shape at run time; onnxruntime then cannot keep its
blocked (NCHWc) layout across the Pad: every such conv costs a Pad plus two layout reorders, which
took over half of the head's time at 480x720. The export's input size is fixed (only the batch axis
is dynamic), so the padding is frozen to constants for it and each constant zero Pad is folded into
the following Conv's own (possibly asymmetric) `pads`. The graph computes exactly the same values.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn


@contextmanager
def static_padding(module: nn.Module, args: tuple) -> Iterator[None]:
    """Within the block, every layer with a `freeze_padding(size)` pads as for the sizes `args` give it."""
    layers = [m for m in module.modules() if hasattr(m, "freeze_padding")]
    hooks = [m.register_forward_pre_hook(lambda m, a: m.freeze_padding(tuple(a[0].shape[-2:]))) for m in layers]
    try:
        if layers:  # one forward pass records each layer's input size
            with torch.no_grad():
                module(*args)
    finally:
        for h in hooks:
            h.remove()
    try:
        yield
    finally:
        for m in layers:
            m.freeze_padding(None)


def _constant(graph: onnx.GraphProto, name: str, opset: int) -> np.ndarray | None:
    """The value of `name` when it follows from initializers and constants alone (the exporter computes even
    constant pad amounts with a few nodes: Concat, Reshape, Slice ...), else None."""
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name])
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    needed, todo = set(), [name]
    while todo:
        x = todo.pop()
        if not x or x in inits or (x in producer and producer[x] in needed):
            continue
        if x not in producer:  # a graph input: not a constant
            return None
        needed.add(producer[x])
        todo += list(graph.node[producer[x]].input)
    nodes = [graph.node[i] for i in sorted(needed)]  # an ONNX graph lists its nodes in topological order
    used = {i for n in nodes for i in n.input}
    sub = onnx.helper.make_graph(nodes, "constant", [], [onnx.helper.make_tensor_value_info(name, 0, None)],
                                 [inits[i] for i in sorted(used) if i in inits])
    model = onnx.helper.make_model(sub, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0])


def fuse_pads(model: onnx.ModelProto) -> int:
    """Fold each constant zero Pad of the spatial axes that feeds only a Conv into that Conv's `pads`.
    Returns how many were folded; nodes left without a consumer are removed."""
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in g.output}
    folded = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
        amounts = _constant(g, pad.input[1], opset) if len(pad.input) > 1 else None
        value = _constant(g, pad.input[2], opset) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        if (len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs or amounts is None
                or value is None or np.any(value != 0) or attrs.get("mode", b"constant") != b"constant"
                or (len(pad.input) > 3 and pad.input[3]) or amounts.size != 8 or np.any(amounts < 0)
                or np.any(amounts[[0, 1, 4, 5]] != 0)):
            continue
        conv = users[0]
        conv_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        t, l_, b, r = int(amounts[2]), int(amounts[3]), int(amounts[6]), int(amounts[7])
        new = [old[0] + t, old[1] + l_, old[2] + b, old[3] + r]
        for a in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        g.node.remove(pad)
        folded += 1
    _prune(g)
    return folded


def _prune(g: onnx.GraphProto) -> None:
    """Remove nodes and initializers nothing reads any more (the shape arithmetic behind a folded Pad)."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def to_onnx(module: nn.Module, args: tuple, inputs: Sequence[str], outputs: Sequence[str],
            opset: int = 17) -> onnx.ModelProto:
    """`module` (in eval mode) as a checked ONNX model with a dynamic batch axis, its padding folded into the convs;
    deterministic: the same weights give the same bytes."""
    module.eval()
    buf = io.BytesIO()
    dyn = {name: {0: "batch"} for name in [*inputs, *outputs]}
    with static_padding(module, args), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on Slice folding
        torch.onnx.export(module, args, buf, input_names=list(inputs), output_names=list(outputs), dynamic_axes=dyn,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    fuse_pads(model)
    onnx.checker.check_model(model)
    return model
