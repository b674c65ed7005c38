"""Benchmark every candidate cut of ResNet-20 on UCSD Ped2: what crosses the link, what it costs, what it keeps.

For each cut (at one bit depth) the artifact is exported to a temporary folder by one shared
Splitter, so the k-NN motion scorer is fitted once, and the offline Pipeline (head.onnx -> codec ->
tail.onnx, onnxruntime with its default intra-op threads, batch 1, frame by frame) runs over all
Ped2 test videos, each video as its own camera so the motion history restarts with every video.
Per cut it reports the cut tensor's shape, float32 and bit-packed sizes, the real encoded frame
sizes (the artifact's zstd coder and codec's raw coder, framing included), median head and tail
times, and frame-level AUROC over all test frames pooled; plus the AUROC of the unsplit float
model (same scorer, float features, no quantization).

    .venv/bin/python bench/slice.py                 # full run: writes bench/results/slice.{json,png}
    .venv/bin/python bench/slice.py --quick         # smoke run on 2 test videos, writes nothing
    .venv/bin/python bench/slice.py --bits 6 --cuts stem,layer2_0 --out /tmp/slice

Times: head = head.onnx only; tail = decode_frame + tail.onnx + history update (Pipeline.score).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

from bench.common import RESULTS, git_revision, machine_info, progress
from infocut.settings import require_shared

QUICK_VIDEOS = 2


class RecordingHead:
    """Wraps Pipeline.head to keep the codes it produced, so they can be re-encoded with other coders."""

    def __init__(self, head):
        self.head, self.codes = head, []

    def __call__(self, images):
        out = self.head(images)
        self.codes.append(out)
        return out


def reference_scores(sp, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The unsplit model: float features at the scorer's layer, scored without any quantization.

    Reuses splitter.export.score_video with an identity dequantizer and an empty tail, so the
    float features go through exactly the scoring the split path's threshold uses.
    """
    import torch
    from torch import nn

    from splitter.export import score_video
    from splitter.graphs import AnomalyTailGraph

    net = sp.features_until(sp.feature_layer)
    ref = AnomalyTailGraph(nn.Identity(), nn.Sequential(), sp.scorer()).eval()
    out = {}
    with torch.no_grad():
        for vid, x in frames.items():
            feats = torch.cat([net(torch.from_numpy(b)) for b in np.array_split(x, max(1, len(x) // 16))])
            out[vid] = score_video(ref, feats, sp.cfg.gap)
    return out


def bench_cut(sp, cut, bits: int, frames: dict[str, np.ndarray], labels: np.ndarray, on_run, on_frame) -> dict:
    """Export `cut` to a temporary artifact, run the offline Pipeline over `frames`, measure."""
    from sklearn.metrics import roc_auc_score

    from codec import encode_frame
    from infocut.artifact import load_artifact
    from infocut.pipeline import Pipeline

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"slice-{cut.name}-") as tmp:
        manifest = sp.export(tmp, cut.name, bits)
        artifact = load_artifact(tmp)
        t_export = time.perf_counter() - t0
        on_run()
        pipe = Pipeline(artifact)  # threads=0: onnxruntime's default intra-op thread count
        rec = pipe.head = RecordingHead(pipe.head)
        scores, zstd_bytes, raw_bytes, head_s, tail_s = [], [], [], [], []
        t1 = time.perf_counter()
        for vid, images in frames.items():

            def feed(images=images):
                for image in images:
                    yield image
                    on_frame()

            run = pipe.run(feed(), camera_id=vid)
            scores += run.scores
            zstd_bytes += run.frame_bytes
            head_s += run.head_s
            tail_s += run.tail_s
            raw_bytes += [len(encode_frame(codes, artifact.bits, "raw")) for codes in rec.codes]
            rec.codes.clear()
        t_run = time.perf_counter() - t1
    zstd_arr = np.array(zstd_bytes)
    return {
        "cut": cut.name,
        "shape": list(cut.shape),
        "elements": cut.elements,
        "bits": bits,
        "coder": artifact.coder,
        "float32_bytes": cut.raw_bytes,
        "packed_bytes": cut.elements * bits / 8,
        "raw_frame_bytes_mean": float(np.mean(raw_bytes)),
        "zstd_frame_bytes_mean": float(zstd_arr.mean()),
        "zstd_frame_bytes_p95": float(np.percentile(zstd_arr, 95)),
        "zstd_frame_bytes_min": int(zstd_arr.min()),
        "zstd_frame_bytes_max": int(zstd_arr.max()),
        "zstd_ratio_vs_packed": float(cut.elements * bits / 8 / zstd_arr.mean()),
        "head_ms_median": 1e3 * float(np.median(head_s)),
        "tail_ms_median": 1e3 * float(np.median(tail_s)),
        "auroc": float(roc_auc_score(labels, scores)),
        "threshold": float(manifest["scorer"]["threshold"]),
        "test_frames_over_threshold": float(np.mean(np.array(scores) > manifest["scorer"]["threshold"])),
        "artifact_id": manifest["artifact_id"],
        "head_onnx_bytes": manifest["files"]["head"]["bytes"],
        "tail_onnx_bytes": manifest["files"]["tail"]["bytes"],
        "export_s": t_export,
        "run_s": t_run,
        "frames": len(scores),
    }


def table(rows: list[dict], ref_auroc: float, title: str):
    from rich.table import Table

    t = Table(title=title)
    cols = ("cut", "shape", "float32 B", "packed B", "raw coder B", "zstd B mean", "zstd B p95",
            "head ms", "tail ms", "AUROC")
    for c in cols:
        t.add_column(c, justify="left" if c == "cut" else "right")
    for r in rows:
        t.add_row(
            r["cut"], "x".join(map(str, r["shape"])), f"{r['float32_bytes']:,}", f"{r['packed_bytes']:,.0f}",
            f"{r['raw_frame_bytes_mean']:,.0f}", f"{r['zstd_frame_bytes_mean']:,.0f}",
            f"{r['zstd_frame_bytes_p95']:,.0f}", f"{r['head_ms_median']:.1f}", f"{r['tail_ms_median']:.1f}",
            f"{r['auroc']:.4f}",
        )
    t.add_row("unsplit (float)", "", "", "", "", "", "", "", "", f"{ref_auroc:.4f}", style="dim")
    return t


def plot(rows: list[dict], ref_auroc: float, bits: int, n_frames: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["cut"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax1.plot(x, [r["float32_bytes"] for r in rows], "s--", color="0.5", label="float32 (unquantized)")
    ax1.plot(x, [r["packed_bytes"] for r in rows], "o-", color="tab:blue", label=f"{bits}-bit packed (raw coder)")
    zm = np.array([r["zstd_frame_bytes_mean"] for r in rows])
    zp = np.array([r["zstd_frame_bytes_p95"] for r in rows])
    ax1.plot(x, zm, "o-", color="tab:orange", label=f"{bits}-bit zstd, mean")
    ax1.plot(x, zp, "v:", color="tab:orange", alpha=0.7, label=f"{bits}-bit zstd, p95")
    for xi, v in zip(x, zm):
        ax1.annotate(f"{v / 1e3:.0f} kB", (xi, v), textcoords="offset points", xytext=(0, -14), ha="center",
                     fontsize=8, color="tab:orange")
    ax1.set_yscale("log")
    ax1.margins(x=0.06, y=0.12)
    ax1.set_ylabel("bytes / frame (log)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, loc="upper right")
    ax1.set_title(f"ResNet-20 on UCSD Ped2 (120x180), every cut at {bits} bits, {n_frames} test frames")

    au = [r["auroc"] for r in rows]
    ax2.plot(x, au, "o-", color="tab:green", label=f"split, {bits}-bit + zstd (onnxruntime)")
    ax2.axhline(ref_auroc, color="0.3", ls="--", label=f"unsplit float reference ({ref_auroc:.3f})")
    for xi, v in zip(x, au):
        ax2.annotate(f"{v:.3f}", (xi, v), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    lo, hi = min([*au, ref_auroc]), max([*au, ref_auroc])
    pad = max(0.01, (hi - lo) * 0.4)
    ax2.set_ylim(lo - pad, min(1.0, hi + pad))
    ax2.set_ylabel("frame-level AUROC")
    ax2.set_xticks(x, names)
    ax2.set_xlabel("cut (last stage in the head)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=8, choices=range(2, 9), metavar="{2..8}",
                        help="quantizer bit depth for every cut (default 8)")
    parser.add_argument("--cuts", help="comma-separated cut names (default: every candidate cut)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run on the first {QUICK_VIDEOS} test videos; writes files only with --out")
    parser.add_argument("--out", type=Path,
                        help=f"folder for slice.json and slice.png (default {RESULTS.relative_to(REPO)}, none with --quick)")
    args = parser.parse_args(argv)
    out = args.out if args.out else (None if args.quick else RESULTS)

    try:
        require_shared("data", "ucsd_ped2")
        require_shared("models")
    except FileNotFoundError as e:
        raise SystemExit(f"bench/slice.py: {e}") from None

    from rich.console import Console
    from sklearn.metrics import roc_auc_score

    from infocut import ped2
    from splitter.export import SplitConfig, Splitter
    from splitter.features import load_frames

    git = git_revision()  # before the run: the revision that produced the numbers
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the whole table
    start = time.perf_counter()
    cfg = SplitConfig(model="resnet20", bits=args.bits, coder="zstd")
    sp = Splitter(cfg, quiet=True)
    cuts = sp.stage_cuts
    if args.cuts:
        wanted = [c.strip() for c in args.cuts.split(",") if c.strip()]
        known = {c.name for c in cuts}
        bad = [w for w in wanted if w not in known]
        if bad:
            raise SystemExit(f"unknown cut(s) {', '.join(bad)}; candidates: {', '.join(c.name for c in cuts)}")
        cuts = [c for c in cuts if c.name in wanted]

    videos = ped2.videos("testing")
    if args.quick:
        videos = dict(list(videos.items())[:QUICK_VIDEOS])
    all_labels = ped2.labels()
    for vid, paths in videos.items():
        if len(all_labels[vid]) != len(paths):
            raise SystemExit(f"test video {vid}: {len(paths)} frames but labels.json says {len(all_labels[vid])}")
    labels = np.concatenate([all_labels[v] for v in videos])
    n_frames = len(labels)

    rows = []
    with progress(console) as bar:
        overall = bar.add_task("cuts", total=len(cuts))
        step = bar.add_task("reading test frames", total=n_frames)
        frames = {}
        for vid, paths in videos.items():
            frames[vid] = load_frames(paths, sp.size)
            bar.advance(step, len(paths))
        bar.reset(step, description="fitting the scorer", total=None)
        t0 = time.perf_counter()
        sp.scorer()
        t_fit = time.perf_counter() - t0
        bar.reset(step, description="unsplit float reference", total=None)
        t0 = time.perf_counter()
        ref = reference_scores(sp, frames)
        t_ref = time.perf_counter() - t0
        ref_auroc = float(roc_auc_score(labels, np.concatenate([ref[v] for v in videos])))
        bar.console.print(f"scorer fit {t_fit:.0f} s; unsplit float reference {t_ref:.0f} s, AUROC {ref_auroc:.4f}")
        for cut in cuts:
            bar.reset(step, description=f"{cut.name}: export", total=None)

            def on_run(cut=cut):
                bar.reset(step, description=f"{cut.name}: pipeline", total=n_frames)

            r = bench_cut(sp, cut, args.bits, frames, labels, on_run, lambda: bar.advance(step))
            rows.append(r)
            bar.console.print(
                f"{cut.name}: export {r['export_s']:.0f} s, pipeline {r['run_s']:.0f} s, "
                f"zstd {r['zstd_frame_bytes_mean']:,.0f} B/frame, AUROC {r['auroc']:.4f}"
            )
            bar.advance(overall)
        bar.remove_task(step)
    runtime = time.perf_counter() - start

    title = (f"ResNet-20 cuts at {args.bits} bits, {len(videos)} Ped2 test videos ({n_frames} frames), "
             "bytes per frame, onnxruntime default threads")
    console.print(table(rows, ref_auroc, title))
    console.print(f"total {runtime:.0f} s")
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "slice",
        "model": cfg.model,
        "input_size": list(sp.size),
        "bits": args.bits,
        "coder": cfg.coder,
        "videos": list(videos),
        "frames": n_frames,
        "anomalous_frames": int(labels.sum()),
        "reference_auroc": ref_auroc,
        "rows": rows,
        "timing_notes": "median per frame, batch 1, onnxruntime CPU default intra-op threads; "
                        "head = head.onnx; tail = decode_frame + tail.onnx + history update",
        "split_config": asdict(cfg),
        "git": git,
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(),
        "runtime_s": {"total": runtime, "scorer_fit": t_fit, "reference": t_ref},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "slice.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, ref_auroc, args.bits, n_frames, out / "slice.png")
    console.print(f"wrote {out / 'slice.json'} and {out / 'slice.png'}")


if __name__ == "__main__":
    main()
