"""Every coder of codec/ on one artifact's codes of the Ped2 test videos: size against the entropy bound, speed.

The artifact's head.onnx runs on the held-out normal training videos (where an artifact's ANS tables
are fitted; for an artifact with another coder the tables are fitted here the same way) and on the
test videos. Per coder, on the test videos: bytes per frame (framing included), the ratio to the
factorized bound (the per-channel plug-in entropy of the test codes themselves, the best any
memoryless per-channel coder can do, framing excluded), encode and decode ms per frame (medians,
this CPU, one thread), and for the temporal coder (ANS delta frames) each key interval. Every frame
is decoded and compared with its codes: decoding must be exact.

    python bench/coders.py artifacts/demo --key-intervals 1,10,50      # writes bench/results/coders-demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import git_revision, machine_info, progress
from codec import decode_frame, entropy_model
from codec.stream import References, StreamEncoder
from edge.head import Head
from infocut import ped2
from infocut.artifact import load_artifact

RESULTS = Path(__file__).resolve().parent / "results"
HELDOUT = ("04", "08", "12", "16")


def video_codes(head: Head, videos: dict[str, list[Path]], size, bar, desc: str, stride: int = 1) -> dict:
    """{video: list of per-tensor codes arrays (frames, C, H, W)} through head.onnx."""
    out = {}
    task = bar.add_task(desc, total=sum(len(v[::stride]) for v in videos.values()))
    for vid, paths in videos.items():
        frames = []
        for p in paths[::stride]:
            frames.append([c[0] for c in head(ped2.read_rgb(p, size)[None])])
            bar.advance(task)
        out[vid] = [np.stack(t) for t in zip(*frames, strict=True)]
    bar.remove_task(task)
    return out


def plugin_bound_bytes(videos: dict, bits: int) -> float:
    """Per frame, the per-channel plug-in entropy of the codes (all test frames pooled), in bytes."""
    total, frames = 0.0, 0
    for t in range(len(next(iter(videos.values())))):
        x = np.concatenate([v[t] for v in videos.values()])  # (frames, C, ...)
        frames = x.shape[0]
        c = x.shape[1]
        rows = np.moveaxis(x, 1, 0).reshape(c, -1)
        for ch in range(c):
            p = np.bincount(rows[ch], minlength=1 << bits) / rows.shape[1]
            p = p[p > 0]
            total += -(p * np.log2(p)).sum() * rows.shape[1]
    return total / 8 / frames


def run_coder(videos: dict, bits: int, coder: str, models, key_interval: int) -> dict:
    sizes, enc_s, dec_s, keys = [], [], [], 0
    for vid, tensors in videos.items():
        enc = StreamEncoder(bits, coder, models, key_interval)
        refs = References()
        for seq in range(tensors[0].shape[0]):
            codes = [t[seq : seq + 1] for t in tensors]
            t0 = time.perf_counter()
            data = enc.encode(codes, seq)
            t1 = time.perf_counter()
            got = decode_frame(data, models, refs.lookup(vid, seq)).tensors
            t2 = time.perf_counter()
            refs.update(vid, seq, got)
            if not all(np.array_equal(a, b) for a, b in zip(got, codes, strict=True)):
                raise AssertionError(f"{coder} (key interval {key_interval}) decoded {vid}/{seq} wrongly")
            sizes.append(len(data)), enc_s.append(t1 - t0), dec_s.append(t2 - t1)
        keys += enc.key_frames
    return {"bytes_per_frame": float(np.mean(sizes)), "bytes_p95": float(np.percentile(sizes, 95)),
            "encode_ms": 1e3 * float(np.median(enc_s)), "decode_ms": 1e3 * float(np.median(dec_s)),
            "frames": len(sizes), "key_frames": keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--key-intervals", default="1,10,50", help="ANS: most frames between key frames (1 = all key)")
    ap.add_argument("--stride", type=int, default=1, help="every n-th test frame (the temporal coder wants 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    art = load_artifact(args.artifact)
    bits = art.bits
    head = Head(art, threads=1)
    console = Console(stderr=True)
    with progress(console) as bar:
        fit = video_codes(head, {k: v for k, v in ped2.videos("training").items() if k in HELDOUT},
                          art.input_size, bar, "held-out codes")
        test = video_codes(head, ped2.videos("testing"), art.input_size, bar, "test codes", args.stride)
    models = art.entropy_models
    fitted_here = models is None
    if fitted_here:
        models = [entropy_model.fit((v[i] for v in fit.values()), bits) for i in range(len(art.cut_shapes))]
    bound = plugin_bound_bytes(test, bits)
    cross = float(np.mean([sum(m.cost_bits(t[f]) for m, t in zip(models, v, strict=True)) / 8
                           for v in test.values() for f in range(v[0].shape[0])]))
    # what a delta frame codes: the codes that differ from the previous frame's (the rest are runs)
    changed = float(np.mean([np.mean([(t[f] != t[f - 1]).mean() for t in v]) for v in test.values()
                             for f in range(1, v[0].shape[0])]))
    console.print(f"codes changed from the previous frame: {changed:.1%}", highlight=False)
    rows = []
    settings = [("raw", 1), ("zstd", 1)] + [("ans", int(k)) for k in args.key_intervals.split(",")]
    for coder, k in settings:
        r = run_coder(test, bits, coder, models if coder == "ans" else None, k)
        r.update(coder=coder, key_interval=k, ratio_to_bound=r["bytes_per_frame"] / bound,
                 setting=coder if coder != "ans" else ("ans intra" if k == 1 else f"ans temporal, key every {k}"))
        rows.append(r)
        console.print(f"{r['setting']}: {r['bytes_per_frame']:,.0f} B/frame", highlight=False)
    table = Table(title=f"coders on {args.artifact} ({art.manifest['cut']['name']}, {bits} bits), Ped2 test, "
                        f"factorized bound {bound:,.0f} B/frame")
    for col in ("coder", "B/frame", "p95", "÷ bound", "encode ms", "decode ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["setting"], f"{r['bytes_per_frame']:,.0f}", f"{r['bytes_p95']:,.0f}",
                      f"{r['ratio_to_bound']:.3f}", f"{r['encode_ms']:.2f}", f"{r['decode_ms']:.2f}")
    Console().print(table)
    out = args.json or RESULTS / f"coders-{args.artifact.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "artifact": str(args.artifact), "artifact_id": art.id, "cut": art.manifest["cut"]["name"], "bits": bits,
        "test_frames": rows[0]["frames"], "stride": args.stride,
        "factorized_bound_bytes": bound, "tables_cross_entropy_bytes": cross, "changed_fraction": changed,
        "tables": "fitted here on held-out normal training videos " + ",".join(HELDOUT) if fitted_here
        else "the artifact's", "rows": rows,
        "how": {"bound": "per-channel plug-in entropy of the test codes pooled over all test frames, bytes per "
                         "frame, framing excluded; tables_cross_entropy: -log2 of the test codes under the "
                         "intra tables; changed_fraction: the share of codes unequal to the previous test "
                         "frame's, averaged over frames", "bytes": "codec.encode_frame, framing and CRC included",
                "ms": "median per frame, this CPU, one thread"},
        "machine": machine_info(1), "git": git_revision(), "command": " ".join(sys.argv),
    }, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
