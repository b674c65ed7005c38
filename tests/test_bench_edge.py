"""bench/edge.py end to end on a few frames: it runs the real agent, accounts for every frame and compares
like with like (the same frames, the same codes, so the same bytes as bare onnxruntime's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infocut.settings import REPO

FRAMES = 8


@pytest.mark.slow
def test_edge_bench_runs_the_agent_and_accounts_for_every_frame(tmp_path):
    out = tmp_path / "edge.json"
    proc = subprocess.run(
        [sys.executable, "bench/edge.py", "--frames", str(FRAMES), "--no-cloud", "--no-sweep", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agent>sink" in proc.stdout and "bare ORT" in proc.stdout and "plain loop" in proc.stdout
    r = json.loads(out.read_text())
    bare, sink = r["bare"], r["sink"]
    assert (sink["frames"], sink["captured"], sink["rejected"], sink["dropped"]) == (FRAMES, FRAMES, 0, 0)
    assert r["threads"] == 2 and len(bare["cpus"]) == len(sink["cpus"]) <= 2
    # The same clip frames through the same head: the agent's frames cost what bare's encoded codes cost, with
    # the same key frames (the link asks for one on a reconnect, not on its first stream).
    assert sink["key_frames"] == bare["key_frames"]
    assert sink["bytes_per_frame"] == pytest.approx(bare["bytes_per_frame"], rel=0.01)
    assert sink["overhead_pct"] == pytest.approx(100 * (bare["fps"] / sink["fps"] - 1))
    assert sink["steady_frames"] == bare["steady_frames"] == FRAMES - 2  # the first left out, then intervals
    assert sink["fps_whole_run"] > 0 and sink["cpu_s_per_frame"] > 0
    # The baseline is bare at its fastest: every layout ran, and none beat the one chosen.
    layouts = r["bare_layouts"]
    assert set(layouts) == {"spin", "sleep", "workers"} and bare["layout"] in layouts
    assert bare["fps"] == max(x["fps"] for x in layouts.values())
    # The plain loop decodes every frame of the clip itself, and is a reference beside the baseline, not it.
    loop = r["loop"]
    assert (loop["layout"], loop["frames"], loop["distinct_frames"]) == ("loop", FRAMES, FRAMES)
    assert loop["bytes_per_frame"] == pytest.approx(bare["bytes_per_frame"], rel=0.01)  # the same frames coded
    assert sink["vs_loop_pct_paired"] == pytest.approx(100 * (loop["fps"] / sink["fps"] - 1))
    assert sink["head_workers"] == min(2, len(sink["cpus"]))  # the agent's default on a CPU head
    # The floor: the baseline run's decode, resize and coding timed alone, against its CPU per frame.
    side = r["side_alone"]["ms_per_frame"]
    assert side == {k: bare["alone_ms_p50"][k] for k in ("capture", "preprocess", "encode")}
    assert r["side_alone"]["pct_of_bare_cpu"] == pytest.approx(sum(side.values()) / (10 * bare["cpu_s_per_frame"]))
    assert sink["receiver_cpu_s_per_frame"] >= 0  # clock ticks of 10 ms: a few frames may not show one
    assert sink["overhead_pct_paired"] == pytest.approx(sink["overhead_pct"])  # one run: its own pair
    assert set(sink["stage_ms_p50"]) == {"capture", "preprocess", "head", "encode", "spool", "send"}
    assert all(v > 0 for v in sink["stage_ms_p50"].values())
    threads = sink["thread_cpu_ms_per_frame"]  # clock ticks (10 ms): only the head's share is sure to show
    head = threads.get("head threads (onnxruntime callers)", 0) + threads.get(
        "onnxruntime intra-op pool (and OpenCV's)", 0)  # the callers or a pool: which runs more varies
    assert head > threads.get("encode thread (encode + spool)", 0)


def test_the_steady_rate_leaves_out_the_start_and_not_the_rest():
    from bench.edge import STEADY_SKIP, steady

    frames = 50
    skip = int(STEADY_SKIP * frames)
    # a slow start (connect, open, fill the stages), then a frame every 25 ms at 40 ms of CPU each, out of order
    done = [(2.0 + 0.5 * i, 1.0 + i) for i in range(skip)]
    done += [(2.0 + 0.5 * skip + 0.025 * i, 1.0 + skip + 0.04 * i) for i in range(frames - skip)]
    r = steady(done[::-1], frames)
    assert r["steady_frames"] == frames - 1 - skip
    assert r["fps"] == pytest.approx(40.0) and r["cpu_s_per_frame"] == pytest.approx(0.04)
    assert steady(done[:3], 3)["steady_frames"] == 1  # a tiny run keeps at least one interval


def test_the_median_interval_holds_the_median_and_narrows_with_agreement():
    from bench.edge import median_ci

    noisy = [4.9, 16.2, 23.0, 13.6, -2.1, 16.0, 20.3, 28.6, 5.6]
    lo, hi = median_ci(noisy)
    assert lo <= 16.0 - 1 < 16.0 + 1 <= hi  # the median, 16.0, well inside a wide interval
    assert median_ci(noisy) == (lo, hi)  # seeded
    assert median_ci([10.0] * 9) == (10.0, 10.0)
    tight = median_ci([9.9, 10.0, 10.1] * 3)
    assert hi - lo > 10 * (tight[1] - tight[0])
