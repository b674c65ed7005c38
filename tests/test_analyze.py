"""The splitter's analysis (splitter.analyze), selection (splitter.selection), report and CLI.

The analysis runs once per module on ResNet-20 at 60x90, two bit depths, three cuts (two stage cuts
and a multi-tensor one across a skip connection), every 24th Ped2 test frame, with the scorer fitted
on two training videos and one held-out video (enough to check the plumbing, not to measure
anything), into a temporary cache that the CLI tests then hit. The selection tests need no data:
they build analysis dicts by hand.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import skip_without_shared

SIZE = (60, 90)
BITS = (8, 4)
CUTS = ("stem", "layer1_0.conv1", "layer2_0")
STRIDE = 24
BANK = 128  # the scorer's memory bank: its greedy coreset costs seconds per 100 entries
ROW_KEYS = {
    "cut", "bits", "kind", "index", "elements", "ideal_bytes", "bits_per_element", "raw_packed_bytes", "coded",
    "info", "dominated", "head_ms", "tail_ms", "auroc", "auroc_lo", "auroc_hi", "drop", "drop_lo", "drop_hi", "qparams",
}
CODED_KEYS = {"mean_bytes", "p95_bytes", "encode_ms", "decode_ms"}


# -- the analysis on real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fewer_videos():
    """Splitter.training_videos cut to 2 fit videos and 1 held-out one for this module (class-wide, so the
    CLI's own Splitter sees it too)."""
    skip_without_shared()
    from splitter.export import Splitter

    orig = Splitter.training_videos

    def fewer(self, heldout: bool):
        vids = orig(self, heldout)
        return dict(list(vids.items())[: 1 if heldout else 2])

    Splitter.training_videos = fewer
    yield
    Splitter.training_videos = orig


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("analysis-cache")


def _splitter():
    from splitter.export import SplitConfig, Splitter

    return Splitter(SplitConfig(input_size=SIZE, bank_size=BANK), quiet=True)


@pytest.fixture(scope="module")
def analysis(fewer_videos, cache_dir):
    from splitter.analyze import analyze

    return analyze(_splitter(), bits=BITS, cuts=CUTS, eval_stride=STRIDE, cache_dir=cache_dir, progress=False)


def test_every_row_has_the_keys(analysis):
    rows = analysis["rows"]
    assert [(r["cut"], r["bits"]) for r in rows] == [(c, b) for c in CUTS for b in BITS]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert set(r["coded"]) == {"raw", "zstd"}
        for c in r["coded"].values():
            assert CODED_KEYS <= set(c)
        assert r["head_ms"] > 0 and r["tail_ms"] > 0
        assert not r["dominated"] and r["auroc"] is not None  # at 60x90 nothing costs more than the raw frame
        assert r["drop_lo"] <= r["drop"] <= r["drop_hi"]
        assert r["info_kind"] == "detector" and set(r["info_linear"]) >= {"estimate", "stderr"}
    kinds = {c["name"]: c["kind"] for c in analysis["cuts"]}
    assert kinds == {"stem": "stage", "layer1_0.conv1": "multi", "layer2_0": "stage"}
    for c in analysis["cuts"]:
        assert {"flops", "params", "peak_bytes", "head_ms", "tail_ms"} <= set(c["cost"])
        assert c["float_info"]["n"] == analysis["eval"]["frames"]
    found = analysis["cuts_found"]
    assert found["total"] == found["stage"] + found["inner"] + found["multi"] and found["multi"] > 0
    ref = analysis["reference"]
    assert 0.5 < ref["auroc"] <= 1.0
    assert 0 < ref["h_y"] <= 1 and ref["info"]["estimate"] <= ref["h_y"] + 3 * ref["info"]["stderr"]


def test_rate_is_bounded_and_falls_with_bits(analysis):
    by = {(r["cut"], r["bits"]): r for r in analysis["rows"]}
    for cut in CUTS:
        hi, lo = by[cut, max(BITS)], by[cut, min(BITS)]
        for r in (hi, lo):
            # The factorized entropy bounds coders that code elements independently with per-channel tables;
            # zstd also exploits runs (ReLU zeros), so it may beat it a little, not by much.
            assert r["coded"]["zstd"]["mean_bytes"] >= 0.9 * r["ideal_bytes"], (cut, r["bits"])
            assert r["ideal_bytes"] <= r["raw_packed_bytes"] * 1.001
            assert r["coded"]["raw"]["mean_bytes"] > r["raw_packed_bytes"]  # framing on top of the packed codes
        assert lo["ideal_bytes"] < hi["ideal_bytes"] and lo["raw_packed_bytes"] < hi["raw_packed_bytes"]
        assert lo["coded"]["zstd"]["mean_bytes"] < hi["coded"]["zstd"]["mean_bytes"]


def test_the_cache_makes_a_rerun_fast_and_identical(analysis, cache_dir):
    from splitter.analyze import analyze

    t0 = time.perf_counter()
    again = analyze(_splitter(), bits=BITS, cuts=CUTS, eval_stride=STRIDE, cache_dir=cache_dir, progress=False)
    elapsed = time.perf_counter() - t0
    assert again["run"]["computed"] == 0 and again["run"]["cached"] > 0
    assert elapsed < 10, f"a fully cached analysis took {elapsed:.1f} s"
    strip = lambda a: json.dumps({k: v for k, v in a.items() if k != "run"}, sort_keys=True)  # noqa: E731
    assert strip(again) == strip(analysis)


def test_cli_analyze_writes_the_report(analysis, cache_dir, tmp_path):
    from typer.testing import CliRunner

    from infocut.cli import app
    from splitter.report import PLOTS

    out = tmp_path / "report"
    res = CliRunner().invoke(app, [
        "analyze", "resnet20", "--height", str(SIZE[0]), "--width", str(SIZE[1]), "--bank-size", str(BANK), "--bits", ",".join(map(str, BITS)),
        "--cuts", ",".join(CUTS), "--eval-stride", str(STRIDE), "--cache", str(cache_dir), "--out", str(out),
    ])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "analysis.json", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "analysis.json").read_text())
    assert [s["bandwidth_bps"] for s in doc["selections"]] == [1e6, 5e6, 50e6]
    md = (out / "report.md").read_text()
    assert "Candidate cuts found" in md and "Data-processing check" in md and "dpi_envelope" in md
    assert doc["run"]["computed"] == 0  # the module's analysis filled the cache


def test_cli_split_auto_exports_the_selection(analysis, cache_dir, tmp_path):
    from typer.testing import CliRunner

    from infocut.artifact import load_artifact
    from infocut.cli import app
    from splitter.selection import select

    out = tmp_path / "artifact"
    res = CliRunner().invoke(app, [
        "split", "resnet20", "--height", str(SIZE[0]), "--width", str(SIZE[1]), "--bank-size", str(BANK), "--auto", "--bandwidth", "5Mbit",
        "--rtt", "20ms", "--device", "rpi4", "--max-drop", "1", "--candidate-bits", ",".join(map(str, BITS)),
        "--cuts", ",".join(CUTS), "--eval-stride", str(STRIDE), "--cache", str(cache_dir), "--out", str(out),
    ])
    assert res.exit_code == 0, res.output + repr(res.exception)
    choice = select(analysis, 5e6, 20.0, "rpi4", max_drop=0.01)["choice"]  # the CLI's default: no fps floor
    art = load_artifact(out)
    m = art.manifest
    assert (m["cut"]["name"], m["quantizer"]["bits"], m["coder"]["name"]) == (choice["cut"], choice["bits"],
                                                                             choice["coder"])
    row = next(r for r in analysis["rows"] if (r["cut"], r["bits"]) == (choice["cut"], choice["bits"]))
    assert m["quantizer"]["tensors"] == row["qparams"]  # the analysed quantizer is the one exported
    assert json.loads((out / "selection.json").read_text())["choice"]["cut"] == choice["cut"]


# -- selection on hand-made analyses -------------------------------------------------------------------

DEVICE = {"name": "test-device", "speed_factor": 2.0, "source": "declared"}


def _row(cut, bits, nbytes, drop, head_ms=1.0, tail_ms=2.0, encode_ms=0.5, decode_ms=0.5, drop_hi=None,
         dominated=False, coder="zstd"):
    return {"cut": cut, "bits": bits, "dominated": dominated, "head_ms": head_ms, "tail_ms": tail_ms,
            "drop": drop, "drop_lo": None if drop_hi is None else drop - 0.01, "drop_hi": drop_hi,
            "coded": {coder: {"mean_bytes": nbytes, "p95_bytes": nbytes * 1.01, "encode_ms": encode_ms,
                              "decode_ms": decode_ms}}}


def test_select_takes_the_fewest_bytes_within_the_drop_limit():
    from splitter.selection import select

    a = {"rows": [
        _row("a", 2, 10_000, 0.03),  # cheapest, loses too much
        _row("b", 4, 20_000, 0.005, drop_hi=0.02),
        _row("c", 8, 40_000, 0.0),
        _row("d", 8, 300_000, 0.0, dominated=True),  # never a candidate
    ]}
    s = select(a, "50Mbit", "20ms", DEVICE, max_drop=0.01, fps=10)
    assert s["feasible"] and not s["fallback"] and s["warning"] is None
    assert (s["choice"]["cut"], s["choice"]["bits"]) == ("b", 4)
    assert s["runner_up"]["cut"] == "c"
    assert "d" not in {c["cut"] for c in s["candidates"]}
    assert "drop limit" in s["reason"] and "a at 2 bits" in s["reason"] and "+0.030" in s["reason"]
    assert "Runner-up: c at 8 bits" in s["reason"]
    assert s["choice"]["drop_hi_ok"] is False and "point estimate only" in s["reason"]
    # predicted latency: head and encode x 2 (device), transfer 20 kB at 50 Mbit/s = 3.2 ms, RTT, decode, tail
    lat = s["choice"]["latency"]
    assert lat["head_ms"] == 2.0 and lat["encode_ms"] == 1.0 and lat["transfer_ms"] == pytest.approx(3.2)
    assert lat["total_ms"] == pytest.approx(2.0 + 1.0 + 3.2 + 20 + 0.5 + 2.0)
    # (bytes, drop, latency): a, b and c each win on something; nothing else was a candidate
    assert {c["cut"] for c in s["pareto"]} == {"a", "b", "c"}


def test_select_breaks_byte_ties_by_latency_and_can_minimize_latency():
    from splitter.selection import select

    a = {"rows": [_row("slow", 4, 20_000, 0.0, head_ms=30.0), _row("fast", 4, 20_000, 0.0, head_ms=5.0),
                  _row("big", 8, 60_000, 0.0, head_ms=0.5, tail_ms=0.5)]}
    assert select(a, 50e6, 20, DEVICE)["choice"]["cut"] == "fast"
    s = select(a, 50e6, 20, DEVICE, objective="latency")
    assert s["choice"]["cut"] == "big" and "lowest latency" in s["reason"]
    with pytest.raises(ValueError, match="objective"):
        select(a, 50e6, 20, DEVICE, objective="accuracy")


def test_select_when_the_fps_floor_binds():
    from splitter.selection import select

    # "small" needs 80 ms of head on the device (40 x 2): 12.5 fps at most; at 25 fps only "large" is fast enough.
    a = {"rows": [_row("small", 4, 10_000, 0.0, head_ms=40.0), _row("large", 8, 30_000, 0.0, head_ms=5.0)]}
    s = select(a, "50Mbit", "20ms", DEVICE, fps=10)
    assert s["choice"]["cut"] == "small"
    s = select(a, "50Mbit", "20ms", DEVICE, fps=25)
    assert s["choice"]["cut"] == "large" and s["feasible"]
    assert "25 fps floor" in s["reason"] and "only 12.5 fps" in s["reason"]
    # a slow link binds the same way: 30 kB at 1 Mbit/s is 240 ms on the wire, 10 kB is 80 ms
    s = select(a, "1Mbit", "20ms", DEVICE, fps=10)
    assert s["choice"]["cut"] == "small" and s["choice"]["fps_bound"] == pytest.approx(1000 / 80)


def test_select_says_which_constraint_nothing_meets_and_falls_back_loudly():
    from splitter.selection import select

    lossy = {"rows": [_row("a", 2, 10_000, 0.05), _row("b", 4, 20_000, 0.02, head_ms=100.0)]}
    s = select(lossy, "50Mbit", "20ms", DEVICE, max_drop=0.01)
    assert not s["feasible"] and s["fallback"]
    assert "NO FEASIBLE SETTING" in s["warning"] and "no setting keeps the fidelity drop within 0.010" in s["warning"]
    assert s["choice"]["cut"] == "b"  # nothing within the limit: the smallest drop
    assert s["reason"] == s["warning"]

    slow = {"rows": [_row("a", 2, 10_000, 0.0, head_ms=200.0), _row("b", 4, 20_000, 0.0, head_ms=100.0)]}
    s = select(slow, "50Mbit", "20ms", DEVICE, fps=10)
    assert s["fallback"] and "no setting sustains 10 fps" in s["warning"] and s["choice"]["cut"] == "b"

    crossed = {"rows": [_row("a", 2, 10_000, 0.0, head_ms=200.0), _row("b", 4, 20_000, 0.05)]}
    s = select(crossed, "50Mbit", "20ms", DEVICE, fps=10)
    assert s["fallback"] and "all sustain less than 10 fps" in s["warning"]
    assert s["choice"]["cut"] == "a"  # within the drop limit, at the frame rate it can sustain (5 fps)
    assert "highest throughput within the drop limit" in s["warning"]

    with pytest.raises(ValueError, match="no measured setting"):
        select({"rows": [_row("a", 8, 1e6, None, dominated=True)]}, "5Mbit", "20ms", DEVICE)


def test_frame_scores_match_the_exported_scorer():
    """MotionKnnScorer.frame_scores (batched GEMM, what the analysis runs) equals its forward (what tail.onnx runs)."""
    import torch

    from splitter.scorer import MotionKnnScorer

    g = torch.Generator().manual_seed(0)
    sc = MotionKnnScorer(torch.randn(8, generator=g), torch.rand(8, generator=g) + 0.5,
                         torch.randn(64, 8, generator=g), topk=5)
    feats, prev = torch.randn(3, 4, 6, 7, generator=g), torch.randn(3, 4, 6, 7, generator=g)
    has = torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        ref = sc(feats, prev, has)[0]
    assert torch.allclose(sc.frame_scores(feats, prev, has), ref, rtol=1e-4, atol=1e-5)


def test_autosplit_compares_with_the_best_setting_measured_within_the_limits():
    """bench/autosplit.py's yardstick: the fewest measured bytes among settings within the drop limit whose
    predicted frame rate meets the floor (an unmeasured or infeasible setting never counts)."""
    from bench.autosplit import best_measured
    from splitter.selection import select

    a = {"rows": [_row("a", 2, 10_000, 0.0, head_ms=200.0), _row("b", 4, 20_000, 0.0), _row("c", 8, 40_000, 0.0)]}
    ped2 = [
        {"method": "split", "cut": "a", "bits": 2, "coder": "zstd", "bytes_per_frame": 9_000, "auroc_drop": 0.0},
        {"method": "split", "cut": "b", "bits": 4, "coder": "zstd", "bytes_per_frame": 21_000, "auroc_drop": 0.002},
        {"method": "split", "cut": "c", "bits": 8, "coder": "zstd", "bytes_per_frame": 39_000, "auroc_drop": 0.0},
        {"method": "h264", "cut": None, "bits": None, "coder": None, "bytes_per_frame": 900, "auroc_drop": 0.0},
        {"method": "split", "cut": "d", "bits": 8, "coder": "zstd", "bytes_per_frame": 500_000, "auroc_drop": None},
    ]
    no_floor = select(a, "50Mbit", "20ms", DEVICE)
    assert best_measured(ped2, {}, no_floor, 0.01)["cut"] == "a"
    floor = select(a, "50Mbit", "20ms", DEVICE, fps=5)  # a's head takes 400 ms on the device: 2.5 fps
    assert best_measured(ped2, {}, floor, 0.01)["cut"] == "b"
    assert best_measured(ped2, {}, floor, 0.001)["cut"] == "c"  # b's measured drop is over this limit
    mine = {("b", 4, "zstd"): {"cut": "b", "bits": 4, "coder": "zstd", "bytes": 19_500, "drop": 0.0}}
    best = best_measured(ped2, mine, floor, 0.001)
    assert (best["cut"], best["bytes"], best["source"]) == ("b", 19_500, "this run (artifact)")
    unreachable = best_measured(ped2, {}, select(a, "50Mbit", "20ms", DEVICE, fps=1000), 0.01)
    assert unreachable["cut"] == "a" and unreachable["floor_met"] is False
    assert best_measured(ped2, {}, floor, -0.001) is None  # nothing within the drop limit


def test_the_per_layer_bounds_respect_data_processing(analysis):
    """Deeper cuts are functions of shallower ones, so their I(T;Y) bounds may not exceed a shallower cut's by
    more than the stated error (2 combined standard errors); the envelope is monotone by construction."""
    from splitter.report import dpi

    d = dpi(analysis)
    assert d["chain"] == list(CUTS)
    assert d["violations"] == [], d["violations"]
    env = d["envelope"]
    assert all(a >= b for a, b in zip(env, env[1:])) and all(e >= v for e, v in zip(env, d["estimates"]))


def test_probe_features_from_the_codes_equal_those_of_the_dequantized_tensor():
    """The analysis computes the probe's summaries on the integer codes (no float copy); dequantizing first must
    give the same numbers, motion included, per-channel and per-tensor quantizers alike."""
    import numpy as np

    import codec
    from splitter.analyze import _channel_counts, _code_features, _probe_features

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(7, 3, 4, 5)).astype(np.float32), rng.gamma(2.0, size=(7, 2, 2, 3)).astype(np.float32)]
    qs = [codec.calibrate(xs[0], 4, per_channel=True), codec.calibrate(xs[1], 3, per_channel=False)]
    codes = [codec.quantize(x, q) for x, q in zip(xs, qs)]
    pos, prev = np.array([1, 3, 6]), np.array([-1, 1, 4])
    want = _probe_features([codec.dequantize(c, q) for c, q in zip(codes, qs)], pos, prev, motion=True)
    np.testing.assert_allclose(_code_features(codes, qs, pos, prev, motion=True), want, rtol=1e-5, atol=1e-6)
    counts = _channel_counts(codes[0], 4)
    assert counts.shape == (3, 16) and counts.sum() == codes[0].size
    assert counts[1, 5] == int((codes[0][:, 1] == 5).sum())
