"""Head costs (FLOPs, parameters, peak memory), device profiles, timing and the latency model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from infocut.settings import REPO
from splitter.cost import (
    Latency,
    head_costs,
    load_device,
    measure_reference,
    model_cost,
    on_device,
    parse_bandwidth,
    parse_duration,
    predict_latency,
    profile_device,
    reference_model,
    time_onnx,
)
from splitter.cuts import list_cuts
from splitter.models.mobilenet_v2 import mobilenet_v2
from splitter.models.resnet_cifar import resnet20


def _chain() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8x8x8
        relu=nn.ReLU(),
        dw=nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise, 8x4x4
        pw=nn.Conv2d(8, 16, 1),  # 16x4x4
        grp=nn.Conv2d(16, 8, 3, padding=1, groups=4),  # grouped, 8x4x4
    ))


def test_flops_params_and_peak_of_a_hand_checked_chain():
    model = _chain()
    conv, relu, dw, pw, grp = 2 * 512 * 3 * 9, 512, 2 * 128 * 1 * 9, 2 * 256 * 8, 2 * 128 * 4 * 9
    total = model_cost(model, (8, 8))
    assert total.flops == conv + relu + dw + pw + grp
    assert total.params == 3 * 8 * 9 + (8 * 9 + 8) + (8 * 16 + 16) + (16 // 4 * 8 * 9 + 8)
    assert total.param_bytes == 4 * total.params

    cuts = list_cuts(model, (8, 8), inner=True)
    costs = head_costs(model, (8, 8), cuts)
    assert [c.index for c in costs] == [1, 2, 3, 4]
    assert [c.flops for c in costs] == [conv, conv + relu, conv + relu + dw, conv + relu + dw + pw]
    assert all(c.flops + c.tail_flops == total.flops for c in costs)
    assert [c.params for c in costs] == [216, 216, 296, 440]
    # live elements while computing each op: input+conv, conv+relu, relu+dw, dw+pw, pw+grp
    live = [192 + 512, 512 + 512, 512 + 128, 128 + 256, 256 + 128]
    assert [c.peak_bytes for c in costs] == [4 * max(live[:k]) for k in range(1, 5)]
    assert total.peak_bytes == 4 * max(live)


def test_linear_and_free_ops():
    model = nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=nn.Linear(12, 5)))
    cost = model_cost(model, (2, 2))
    assert cost.flops == 2 * 12 * 5
    assert cost.params == 12 * 5 + 5



class _Wide(nn.Module):
    """x -> [Identity] -> 4x wider conv; x stays live for a later read, so a copy would show."""

    def __init__(self, identity: bool):
        super().__init__()
        self.same = nn.Identity() if identity else None
        self.conv = nn.Conv2d(4, 16, 3, padding=1)

    def forward(self, x):
        y = self.conv(self.same(x) if self.same is not None else x)
        return y.mean((2, 3)) + x.mean((2, 3)).repeat(1, 4)


def test_a_view_shares_its_input_memory():
    costs = [model_cost(nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3, padding=1), block=_Wide(identity))),
                        (8, 8)) for identity in (True, False)]
    assert costs[0].flops == costs[1].flops
    # peak at the first mean: x (4x8x8, which the Identity aliases, still to be read), the conv's
    # output (16x8x8) and its mean (16); a copy for the Identity would add 256 while the conv runs
    assert costs[0].peak_bytes == costs[1].peak_bytes == 4 * (256 + 1024 + 16)


class _Block(nn.Module):
    def __init__(self, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.relu(self.conv(x))
        return out + x if self.residual else out * 2


def _res(residual: bool) -> nn.Sequential:
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3, padding=1), block=_Block(residual)))


def test_a_cut_across_a_skip_keeps_the_block_input_live():
    size = 4 * 8 * 8  # every tensor after the stem
    res, chain = _res(True), _res(False)
    (cut,) = [c for c in list_cuts(res, (8, 8), inner=True) if c.name == "block.relu"]
    assert len(cut.tensors) == 2  # the relu's output and the stem's, for the skip
    (with_skip,) = head_costs(res, (8, 8), [cut])
    (plain,) = head_costs(chain, (8, 8), [c for c in list_cuts(chain, (8, 8), inner=True) if c.index == cut.index])
    # ops: stem, conv, relu. The skip keeps the stem's output live through conv and relu.
    assert with_skip.peak_bytes == 4 * 3 * size
    assert plain.peak_bytes == 4 * 2 * size
    assert with_skip.peak_bytes >= cut.raw_bytes
    assert with_skip.flops == plain.flops  # the add is in the tail
    assert model_cost(res, (8, 8)).flops == model_cost(chain, (8, 8)).flops  # add vs mul: one op each


@pytest.mark.parametrize("factory,size,upto", [(resnet20, (32, 32), None), (mobilenet_v2, (64, 64), None),
                                               (mobilenet_v2, (64, 64), "block5")])
def test_head_costs_grow_with_depth_and_add_up(factory, size, upto):
    model = factory()
    cuts = list_cuts(model, size, upto=upto, inner=True)
    costs = head_costs(model, size, cuts, upto=upto)
    total = model_cost(model, size, upto=upto)
    assert len(costs) == len(cuts) > 5
    for a, b in zip(costs, costs[1:]):
        assert a.index < b.index
        assert a.flops <= b.flops and a.params <= b.params and a.peak_bytes <= b.peak_bytes
    assert all(c.flops + c.tail_flops == c.total_flops == total.flops for c in costs)
    assert costs[-1].params <= total.params
    assert 0 < costs[0].flops < costs[-1].flops


def test_mobilenet_v2_matches_the_paper():
    """Sandler et al. 2018, Table 3: 300M multiply-adds and 3.4M parameters (1000 classes, BN
    unfolded); here BN is folded into conv biases and the classifier has 1001 outputs."""
    cost = model_cost(mobilenet_v2(), (224, 224))
    assert 0.97 * 300e6 < cost.flops / 2 < 1.03 * 300e6, cost.flops
    assert 3.4e6 < cost.params < 3.6e6, cost.params
    assert cost.params == sum(p.numel() for p in mobilenet_v2().parameters())


def test_a_cut_from_another_model_is_refused():
    cut = list_cuts(resnet20(), (32, 32))[3]
    with pytest.raises(ValueError, match="does not belong"):
        head_costs(_chain(), (8, 8), [cut])


def test_batchnorm_statistics_are_left_alone():
    model = resnet20().train()
    before = model.stem.bn.running_mean.clone()
    model_cost(model, (32, 32))
    assert model.training and torch.equal(model.stem.bn.running_mean, before)


@pytest.mark.parametrize("text,bps", [
    ("5Mbit", 5e6), ("5 Mbit/s", 5e6), ("500kbit", 5e5), ("1Gbit", 1e9), ("2.5MB/s", 2e7), ("1e6", 1e6),
    ("20Mbps", 2e7), ("5Mb", 5e6), ("100 kB/s", 8e5), ("1 MiB/s", 8 * 2**20), ("3 bytes/s", 24), (7, 7.0),
])
def test_parse_bandwidth(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["", "Mbit", "5 M", "5 Xbit", "-5Mbit", "0", "5 Mbit/s/s", "fast"])
def test_parse_bandwidth_rejects(text):
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth(text)


@pytest.mark.parametrize("text,ms", [("20ms", 20), ("0.02s", 20), ("20", 20), ("500us", 0.5), ("1.5 s", 1500),
                                     (0, 0)])
def test_parse_duration(text, ms):
    assert parse_duration(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "ms", "20 sec", "1h", "-1ms"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_predict_latency():
    lat = predict_latency(head_ms=10, bytes_per_frame=12_500, bandwidth_bps=1e6, rtt_ms=20, decode_ms=2,
                          tail_ms=5, encode_ms=3)
    assert isinstance(lat, Latency)
    assert lat.transfer_ms == pytest.approx(100)  # 100 kbit at 1 Mbit/s
    assert lat.total_ms == pytest.approx(10 + 3 + 100 + 20 + 2 + 5)
    assert lat.fps_bound == pytest.approx(10)  # the link is the slowest stage
    fast = predict_latency(30, 1000, 1e9, rtt_ms=80)
    assert fast.fps_bound == pytest.approx(1000 / 30)  # the round trip does not limit throughput
    assert predict_latency(0, 0, 1e6, 0).fps_bound == math.inf
    with pytest.raises(ValueError):
        predict_latency(1, 100, 0, 10)


def test_devices_json_and_load_device(tmp_path):
    table = json.loads((REPO / "splitter" / "devices.json").read_text())
    assert table["reference_ms"] > 0
    for name in ("here", "x86-server", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano"):
        dev = load_device(name)
        assert dev["name"] == name and dev["speed_factor"] > 0 and dev["note"]
        assert dev["source"] in ("declared", "measured")
    assert load_device("here")["speed_factor"] == 1.0
    assert load_device("rpi4")["speed_factor"] > load_device("rpi5")["speed_factor"] > 1
    assert on_device(10.0, "here") == 10.0

    path = tmp_path / "cam7.json"
    path.write_text(json.dumps({"name": "cam7", "speed_factor": 3.5, "source": "measured", "note": "test"}))
    assert load_device(path)["speed_factor"] == 3.5
    assert load_device(str(path))["name"] == "cam7"
    with pytest.raises(ValueError, match="unknown device 'nosuch'.*rpi4"):
        load_device("nosuch")
    with pytest.raises(ValueError, match="no device profile file"):
        load_device(tmp_path / "missing.json")
    path.write_text(json.dumps({"speed_factor": -1, "source": "measured"}))
    with pytest.raises(ValueError, match="speed_factor"):
        load_device(path)


def test_time_onnx_and_the_reference_workload(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ms = time_onnx(model.SerializeToString(), {"x": np.ones((1, 16), np.float32)}, runs=5, warmup=1)
    assert math.isfinite(ms) and ms > 0

    ref = measure_reference(runs=3, warmup=1)
    assert math.isfinite(ref) and ref > 0
    # the edge's way: a reference .onnx written where onnx is installed, timed with onnxruntime only
    path = tmp_path / "reference.onnx"
    path.write_bytes(reference_model())
    assert reference_model() == path.read_bytes()  # deterministic
    prof = profile_device("cam", model=path, reference_ms=ref, repeats=1)
    assert prof["source"] == "measured" and math.isfinite(prof["speed_factor"]) and prof["speed_factor"] > 0
    (tmp_path / "cam.json").write_text(json.dumps(prof))
    assert load_device(tmp_path / "cam.json")["speed_factor"] == prof["speed_factor"]


def test_the_device_side_does_not_import_torch():
    code = (
        "import sys\n"
        "import splitter.cost as c\n"
        "c.parse_bandwidth('5Mbit'); c.load_device('rpi4'); c.predict_latency(1, 1, 1e6, 1)\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
