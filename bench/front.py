"""Where the split sits between cloud-only and edge-only: bytes, AUROC and edge compute on one plot.

Reads bench/results/ped2.json (every row bench/ped2.py measured: streaming the video with H.264 /
H.265 / JPEG / WebP, the split at each cut and bit depth, the learned bottlenecks and pruned cuts)
and adds the edge-only point: the whole detector (MobileNetV2 to the scored layer and the k-NN
scorer) runs next to the camera and only the frame's score goes out. Each point gets the DNN
compute it puts on the edge (MFLOPs per frame: none for the video codecs, the head for a split,
everything for edge-only) and its edge ms on this CPU where measured. Writes front.png (AUROC
against bytes, coloured by edge MFLOPs; and edge MFLOPs against bytes for the points within 1
AUROC point of unsplit) and front.json, and prints the table.

    python bench/front.py            # after bench/ped2.py (and its --methods bottleneck,prune rows)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import git_revision, plot_style
from protos import infocut_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
VIDEO = ("h264", "h265", "jpeg", "webp")
MARKERS = {"h264": "s", "h265": "D", "jpeg": "v", "webp": "^", "split": "o", "split ans": "h", "split ans-delta": "p",
           "bottleneck": "*", "prune": "P", "edge-only": "X"}
SPLIT_CODERS = ("zstd", "ans", "ans-delta")  # the raw coder's points are zstd's, only larger


def kind(p: dict) -> str:
    """The marker a point gets: its method, and for the split its coder unless zstd."""
    return p["method"] if p["method"] != "split" or p.get("coder") == "zstd" else f"split {p['coder']}"


def score_only_bytes() -> int:
    """What edge-only sends per frame: the result message with its camera id, seq, score and flag."""
    return pb.FrameResult(camera_id="ped2-test01", seq=1_000_000, score=1.234567, is_anomaly=True).ByteSize()


def head_mflops(model: str, size: tuple[int, int], upto: str, cuts: list[str]) -> tuple[dict[str, float], float, tuple]:
    """MFLOPs of the head at each named cut, of the whole model up to the scored layer, and that layer's
    feature shape (C, H, W)."""
    from splitter.cost import head_costs, model_cost
    from splitter.cuts import find_cut, list_cuts
    from splitter.loader import load_model

    net = load_model(model)
    found = list_cuts(net, size, upto=upto, inner=True)
    costs = head_costs(net, size, [find_cut(found, c) for c in cuts], upto=upto)
    shape = tuple(find_cut(found, upto).tensors[0].shape)
    return {c.name: c.flops / 1e6 for c in costs}, model_cost(net, size, upto=upto).flops / 1e6, shape


def scorer_mflops(ped2: dict, feature_shape: tuple[int, int, int]) -> float:
    """The k-NN scorer: every location's (feature, change) vector against the bank, as one GEMM."""
    c, h, w = feature_shape
    return 2.0 * h * w * (2 * c) * ped2["split_config"]["bank_size"] / 1e6


def points(ped2: dict, flops: dict[str, float], detector_mflops: float) -> list[dict]:
    ref = next(r for r in ped2["rows"] if r["method"] == "unsplit")
    out = []
    for r in ped2["rows"]:
        m = r["method"]
        if m == "unsplit" or r.get("auroc") is None or (m == "split" and r.get("coder") not in SPLIT_CODERS):
            continue
        mf = 0.0 if m in VIDEO else r.get("head_mflops", flops.get(r.get("cut")))
        out.append({"method": m, "coder": r.get("coder"), "setting": r["setting"], "bytes_per_frame": r["bytes_per_frame"],
                    "auroc": r["auroc"], "auroc_lo": r.get("auroc_lo"), "auroc_hi": r.get("auroc_hi"),
                    "drop": ref["auroc"] - r["auroc"], "edge_mflops": mf, "edge_ms": r.get("head_ms")})
    out.append({"method": "edge-only", "setting": "whole detector at the edge, score sent",
                "bytes_per_frame": float(score_only_bytes()), "auroc": ref["auroc"], "auroc_lo": ref.get("auroc_lo"),
                "auroc_hi": ref.get("auroc_hi"), "drop": 0.0, "edge_mflops": detector_mflops, "edge_ms": None})
    return out


def plot(pts: list[dict], path: Path, unsplit: float, title: str) -> None:
    plot_style()
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 6.2))
    norm = Normalize(0, max(p["edge_mflops"] for p in pts))
    for m, marker in MARKERS.items():
        ps = [p for p in pts if kind(p) == m]
        if not ps:
            continue
        sc = a.scatter([p["bytes_per_frame"] for p in ps], [p["auroc"] for p in ps], c=[p["edge_mflops"] for p in ps],
                       cmap="viridis", norm=norm, marker=marker, s=60 if marker != "*" else 140, edgecolors="k",
                       linewidths=0.4, label="split zstd" if m == "split" else m)
    fig.colorbar(sc, ax=a, label="edge DNN MFLOPs per frame")
    a.axhline(unsplit, color="grey", lw=0.8, ls=":")
    a.axhline(unsplit - 0.01, color="grey", lw=0.8, ls="--", label="1 point below unsplit")
    a.set(xscale="log", xlabel="bytes per frame (log)", ylabel="frame AUROC", title="rate and accuracy",
          ylim=(max(0.5, min(p["auroc"] for p in pts) - 0.02), 1.0))
    a.legend(fontsize=7, loc="lower right")
    ok = [p for p in pts if p["drop"] <= 0.01]
    for m, marker in MARKERS.items():
        ps = [p for p in ok if kind(p) == m]
        if ps:
            b.scatter([p["bytes_per_frame"] for p in ps], [p["edge_mflops"] for p in ps], marker=marker, s=70,
                      label="split zstd" if m == "split" else m, edgecolors="k", linewidths=0.4)
    b.set(xscale="log", xlabel="bytes per frame (log)", ylabel="edge DNN MFLOPs per frame",
          title="within 1 AUROC point of unsplit: what the edge computes for what it sends")
    b.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ped2", type=Path, default=RESULTS / "ped2.json")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    ped2 = json.loads(args.ped2.read_text())
    size, upto = tuple(ped2["input_size"]), ped2["feature_layer"]
    cuts = sorted({r["cut"] for r in ped2["rows"] if r["method"] == "split" and r.get("cut")})
    flops, model_mflops, shape = head_mflops(ped2["model"], size, upto, cuts)
    detector = model_mflops + scorer_mflops(ped2, shape)
    pts = points(ped2, flops, detector)
    unsplit = next(r for r in ped2["rows"] if r["method"] == "unsplit")["auroc"]
    table = Table(title=f"Ped2, {ped2['model']} to {upto}: bytes, AUROC and edge compute (unsplit {unsplit:.3f})")
    for c in ("method", "setting", "B/frame", "AUROC", "drop", "edge MFLOPs", "edge ms"):
        table.add_column(c, justify="left" if c in ("method", "setting") else "right")
    for p in sorted(pts, key=lambda p: (p["drop"] > 0.01, p["bytes_per_frame"])):
        table.add_row(p["method"], p["setting"], f"{p['bytes_per_frame']:,.0f}", f"{p['auroc']:.3f}",
                      f"{p['drop']:+.3f}", f"{p['edge_mflops']:,.0f}", "" if p["edge_ms"] is None else f"{p['edge_ms']:.1f}")
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(pts, args.out / "front.png", unsplit, f"UCSD Ped2 frame AUROC, {ped2['model']} features at {upto}, "
         f"{size[0]}x{size[1]}: cloud-only (video codecs), split, edge-only")
    (args.out / "front.json").write_text(json.dumps({
        "unsplit_auroc": unsplit, "detector_mflops": detector, "model_mflops_to_scored_layer": model_mflops,
        "score_only_bytes": score_only_bytes(), "points": pts, "source": str(args.ped2), "git": git_revision(),
        "how": {"edge_mflops": "DNN multiply-adds x2 per frame on the edge (splitter/cost.py); video codecs: 0 "
                               "(their encoder is not a DNN; its ms is edge_ms)",
                "edge_ms": "head_ms of bench/ped2.py on this CPU (video: encoder ms per frame)",
                "edge-only": "unsplit AUROC; bytes: the FrameResult message with the score"},
    }, indent=2) + "\n")
    print(f"wrote {args.out / 'front.png'} and {args.out / 'front.json'}")


if __name__ == "__main__":
    main()
