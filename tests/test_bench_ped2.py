"""bench/ped2.py's ANS rows: the pass that codes every frame as the product's stream, and how its rows
join the zstd rows (AUROC borrowed from the same codes, placed after them, merged a part at a time)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from bench import ped2 as bench

H, W = 32, 48


def camera(frames: int, seed: int) -> list[np.ndarray]:
    """A fixed camera: a textured background and a square moving across it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H // 4, W // 4, 3)).astype(np.uint8)
    base = cv2.resize(base, (W, H), interpolation=cv2.INTER_LINEAR)
    out = []
    for t in range(frames):
        f = base.copy()
        x = (3 * t) % (W - 8)
        f[10:18, x : x + 8] = (240, 220, 30)
        out.append(f)
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A Splitter look-alike: two conv stages (the cuts), quantizers calibrated on its own activations,
    held-out videos as image files (what ans_pass fits the tables on), and test videos in memory."""
    import torch
    from torch import nn

    import codec
    from splitter.graphs import Preprocess

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("s0", nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()))
    model.add_module("s1", nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()))
    model.eval()
    pre = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    root = tmp_path_factory.mktemp("heldout")
    held = {}
    for v in range(2):
        paths = []
        for t, f in enumerate(camera(14, seed=v)):
            p = root / f"{v}_{t:03d}.png"
            cv2.imwrite(str(p), f[..., ::-1])
            paths.append(p)
        held[f"h{v}"] = paths
    with torch.no_grad():
        x = pre(torch.from_numpy(np.stack(camera(8, seed=5))))
        acts = {"s0": model.s0(x)}
        acts["s1"] = model.s1(acts["s0"])
    pairs = [(c, b) for c in ("s0", "s1") for b in (3, 6)]
    qparams = {(c, b): codec.calibrate(acts[c].numpy(), b, per_channel=True, percentile=99.9) for c, b in pairs}
    sp = SimpleNamespace(model=model, preprocess=pre, size=(H, W), qparams=qparams,
                         stage_cuts=[SimpleNamespace(name="s0"), SimpleNamespace(name="s1")],
                         cfg=SimpleNamespace(key_interval=5), training_videos=lambda heldout: held if heldout else {})
    native = {"a": camera(12, seed=7), "b": camera(7, seed=8)}
    return sp, pairs, native


class Bar:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def remove_task(self, *a):
        pass


def test_ans_pass_codes_every_frame_as_the_stream(fake, tmp_path):
    sp, pairs, native = fake
    ans = bench.ans_pass(sp, pairs, native, tmp_path, 1, Bar(), stride=2)
    frames = sum(len(v) for v in native.values())
    assert ans["order"] == pairs and ans["heldout_frames"] == 28
    keys_delta = sum(math.ceil(len(v) / 5) for v in native.values())  # each video starts a camera, key every 5
    for cut, b in pairs:
        key, delta = (cut, b, "ans"), (cut, b, "ans-delta")
        assert len(ans["sizes"][key]) == len(ans["sizes"][delta]) == frames  # every frame, not only the scored
        assert ans["key_frames"][key] == frames
        assert len(ans["zstd_sizes"][(cut, b)]) == sum(len(range(0, len(v), 2)) for v in native.values())
        assert ans["decoded_exactly"][key] == ans["decoded_exactly"][delta] == bench.DECODE_SAMPLES
        if b <= 4:  # inter tables: delta frames, far smaller on a fixed camera
            assert ans["key_frames"][delta] == keys_delta
            assert np.mean(ans["sizes"][delta]) < np.mean(ans["sizes"][key])
        else:  # no inter table: StreamEncoder sends key frames only, the very ans frames
            assert ans["key_frames"][delta] == frames
            assert ans["sizes"][delta] == ans["sizes"][key]
    # the rows: the zstd row's AUROC, this coder's bytes, placed after zstd; a rerun of a part replaces that part
    rows = [{"method": "unsplit", "auroc": 0.9, "auroc_smoothed": 0.9, "bytes_per_frame": 1e6, "setting": "u"}]
    for cut, b in pairs:
        for coder in ("raw", "zstd"):
            z = float(np.mean(ans["zstd_sizes"][(cut, b)]))
            rows.append({"method": "split", "cut": cut, "bits": b, "coder": coder, "setting": f"{cut} {b}-bit {coder}",
                         "bytes_per_frame": z if coder == "zstd" else 1e5, "bytes_p95": z, "auroc": 0.895,
                         "auroc_smoothed": 0.9, "auroc_drop": 0.005, "head_onnx_ms": 1.0, "tail_onnx_ms": 2.0})
    assert bench.check_zstd(ans, {(r["cut"], r["bits"]): r["bytes_per_frame"] for r in rows if r.get("coder") == "zstd"})
    new = bench.ans_rows(rows, ans)
    merged = bench.with_ans_rows(rows, new)
    assert [r["coder"] for r in merged[1:5]] == ["raw", "zstd", "ans", "ans-delta"]
    d = next(r for r in merged if r["setting"] == "s1 3-bit ans-delta")
    assert d["auroc"] == 0.895 and d["frames_encoded"] == frames and d["key_interval"] == 5
    assert d["head_ms"] == pytest.approx(1.0 + d["encode_ms"]) and d["tail_ms"] == pytest.approx(d["decode_ms"] + 2.0)
    best = bench.summarize(merged)["smallest_within_1pt"]["split"]
    assert best["setting"].endswith("ans-delta")
    again = bench.with_ans_rows(merged, [dict(r, bytes_per_frame=1.0) for r in new if r["cut"] == "s1"])
    assert len(again) == len(merged)
    assert {r["bytes_per_frame"] == 1.0 for r in again if r.get("coder") in bench.ANS_CODERS and r.get("cut") == "s1"} == {True}
    assert all(r["bytes_per_frame"] > 1.0 for r in again if r.get("coder") in bench.ANS_CODERS and r.get("cut") == "s0")
    assert "ans-delta ÷ zstd" in "\n".join(bench.coders_markdown({"rows": merged}))
