"""Evaluate one artifact end to end on the Ped2 test videos, through the real offline pipeline.

head.onnx -> codec -> tail.onnx (infocut.pipeline, the same pieces as edge and cloud), each test
video as its own camera. Prints and writes (bench/results/<name>.json): frame AUROC, bytes per
frame (mean, p95; framing included), head and tail ms (medians, batch 1), and per video how many
normal and anomalous frames score over the artifact's threshold.

    python bench/evaluate.py artifacts/demo            # writes bench/results/demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo first: bench/edge.py is not the edge package

from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from infocut import ped2
from infocut.artifact import load_artifact
from infocut.pipeline import Pipeline, Run

RESULTS = Path(__file__).resolve().parent / "results"


def run_artifact(art, quiet: bool = False) -> dict[str, Run]:
    """Every Ped2 test video through the artifact's pipeline, each its own camera: {video: Run}."""
    pipe = Pipeline(art)
    runs = {}
    for vid, paths in ped2.videos("testing").items():
        runs[vid] = pipe.run((ped2.read_rgb(p, art.input_size) for p in paths), camera_id=vid)
        if not quiet:
            print(f"video {vid}: {len(paths)} frames", file=sys.stderr, flush=True)
    return runs


def evaluate(artifact_dir: Path) -> dict:
    art = load_artifact(artifact_dir)
    labels = ped2.labels()
    rows, ys, scores, nbytes, head_s, tail_s = [], [], [], [], [], []
    for vid, run in run_artifact(art).items():
        s, y = np.array(run.scores), labels[vid]
        over = s >= art.threshold
        rows.append({"video": vid, "frames": len(s), "normal_over": int(over[~y].sum()), "normal": int((~y).sum()),
                     "anomalous_over": int(over[y].sum()), "anomalous": int(y.sum())})
        ys.append(y), scores.append(s), nbytes.extend(run.frame_bytes)
        head_s.extend(run.head_s), tail_s.extend(run.tail_s)
    y, s = np.concatenate(ys), np.concatenate(scores)
    return {
        "artifact": str(artifact_dir), "artifact_id": art.id, "split_config": art.manifest.get("split_config"),
        "frames": int(len(y)), "anomalous_frames": int(y.sum()),
        "auroc": float(roc_auc_score(y, s)), "threshold": art.threshold,
        "bytes_per_frame": float(np.mean(nbytes)), "bytes_p95": float(np.percentile(nbytes, 95)),
        "head_ms": 1e3 * float(np.median(head_s)), "tail_ms": 1e3 * float(np.median(tail_s)),
        "videos": rows,
        "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
        "command": " ".join(sys.argv), "machine": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--out", type=Path, help="JSON to write (default bench/results/<artifact name>.json)")
    args = parser.parse_args()
    result = evaluate(args.artifact)
    table = Table(title=f"{args.artifact} on Ped2 test ({result['frames']} frames)")
    for col in ("AUROC", "bytes/frame", "p95", "head ms", "tail ms", "threshold"):
        table.add_column(col, justify="right")
    table.add_row(f"{result['auroc']:.4f}", f"{result['bytes_per_frame']:,.0f}", f"{result['bytes_p95']:,.0f}",
                  f"{result['head_ms']:.1f}", f"{result['tail_ms']:.1f}", f"{result['threshold']:.3f}")
    Console().print(table)
    for r in result["videos"]:
        print(f"  video {r['video']}: over threshold {r['normal_over']}/{r['normal']} normal, "
              f"{r['anomalous_over']}/{r['anomalous']} anomalous")
    out = args.out or RESULTS / f"{args.artifact.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
