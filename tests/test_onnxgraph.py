"""splitter.onnxgraph: the exported graphs pad inside their convs and compute what the model computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from splitter.models.mobilenet_v2 import Conv, mobilenet_v2
from splitter.onnxgraph import fuse_pads, to_onnx


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("size", [(48, 64), (45, 67)])  # even sizes pad after only, odd ones both sides
def test_mobilenet_head_exports_without_pad_nodes(size):
    torch.manual_seed(0)
    head = torch.nn.Sequential(*list(mobilenet_v2().children())[:7]).eval()  # stem .. block5
    x = torch.randn(2, 3, *size)
    model = to_onnx(head, (x[:1],), ["x"], ["y"])
    ops = [n.op_type for n in model.graph.node]
    assert "Pad" not in ops and "Shape" not in ops, ops
    pads = {tuple(a.ints) for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"}
    if size == (48, 64):
        assert (0, 0, 1, 1) in pads  # the stride-2 convs: TF's 'SAME' puts the odd row and column after
    with torch.no_grad():
        want = head(x).numpy()
    np.testing.assert_allclose(_run(model, x.numpy()), want, rtol=1e-4, atol=1e-4)  # batch 2 on a batch-1 export
    assert all(m.frozen_padding is None for m in head.modules() if isinstance(m, Conv))  # unfrozen afterwards


def _pad_conv(mode: str = "constant", value: float | None = None, pads=(0, 0, 0, 1, 0, 0, 1, 0)) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    p = numpy_helper.from_array(np.array(pads, np.int64), "p")
    inits, pad_in = [w, p], ["x", "p"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "v"))
        pad_in.append("v")
    nodes = [helper.make_node("Pad", pad_in, ["xp"], mode=mode), helper.make_node("Conv", ["xp", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fuse_pads_folds_zero_constant_pads_and_keeps_the_values():
    x = np.random.default_rng(0).standard_normal((1, 1, 5, 6)).astype(np.float32)
    model = _pad_conv(value=0.0)
    want = _run(model, x)
    assert fuse_pads(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert [list(a.ints) for a in model.graph.node[0].attribute if a.name == "pads"] == [[0, 1, 1, 0]]
    assert {i.name for i in model.graph.initializer} == {"w"}  # the pad amounts went with the Pad
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-6)


@pytest.mark.parametrize("kw", [{"mode": "reflect"}, {"value": 1.0}, {"pads": (0, 1, 0, 0, 0, 0, 0, 0)}])
def test_fuse_pads_leaves_pads_a_conv_cannot_do(kw):
    model = _pad_conv(**kw)
    assert fuse_pads(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv"]
