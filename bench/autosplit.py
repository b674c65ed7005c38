"""Automatic split selection against measurement.

For each scenario (edge device, fps floor) and link (1, 5 and 50 Mbit/s by default) this takes what
`infocut split --auto` would choose from an analysis (`infocut analyze`), exports that artifact with
the analysed quantizer, runs it end to end on the Ped2 test videos (head.onnx -> codec -> tail.onnx,
each video its own camera, bench/evaluate.py's pipeline) and compares:

- predicted (the analysis) against measured (the artifact) bytes per frame and AUROC, on the frames
  bench/ped2.py scores (every `stride`-th frame, each against frame t - gap, as live);
- the choice against the best setting measured at equal AUROC: the fewest bytes per frame among the
  split settings of bench/ped2.py (and the artifacts measured here) whose measured AUROC drop is within
  the limit and whose predicted frame rate meets the floor. The choice passes when its measured bytes
  are within 10% of that best and its measured drop is within the limit.

    infocut analyze mobilenet_v2 --gap 2 --topk 50 --eval-stride 2    # reports/mobilenet_v2/analysis.json
    python bench/ped2.py                                               # bench/results/ped2.json
    python bench/autosplit.py                                          # bench/results/autosplit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS, git_revision, machine_info

LINKS = ("1Mbit", "5Mbit", "50Mbit")
SCENARIOS = ("rpi4:0", "jetson-orin-nano:10")
TOLERANCE = 1.10  # the choice's measured bytes may exceed the best measured by at most 10%


def scenario(text: str) -> tuple[str, float]:
    device, _, fps = text.partition(":")
    return device, float(fps or 0)


def export_choice(sp, analysis: dict, choice: dict, out: Path) -> Path:
    """The chosen (cut, bits, coder) exported as `split --auto` does: with the analysed quantizer."""
    import codec

    row = next(r for r in analysis["rows"] if (r["cut"], r["bits"]) == (choice["cut"], choice["bits"]))
    qs = [codec.QuantParams.from_json(q) for q in row["qparams"]]
    d = out / f"{choice['cut']}-{choice['bits']}-{choice['coder']}"
    sp.export(d, choice["cut"], choice["bits"], coder=choice["coder"], qparams=qs)
    return d


def measure(artifact_dir: Path, stride: int) -> dict:
    """Bytes per frame and AUROC of an artifact on every `stride`-th Ped2 test frame (the pipeline runs every
    frame, so each scored frame is compared with frame t - gap exactly as live)."""
    from bench.evaluate import run_artifact
    from infocut import ped2
    from infocut.artifact import load_artifact
    from splitter.metrics import auroc

    art = load_artifact(artifact_dir)
    labels = ped2.labels()
    ys, scores, nbytes = [], [], []
    for vid, run in run_artifact(art, quiet=True).items():
        idx = np.arange(0, len(run.scores), stride)
        ys.append(labels[vid][idx]), scores.append(np.asarray(run.scores)[idx])
        nbytes.append(np.asarray(run.frame_bytes)[idx])
    y, s, b = np.concatenate(ys), np.concatenate(scores), np.concatenate(nbytes)
    return {"artifact_id": art.id, "frames": int(len(y)), "auroc": auroc(y, s), "bytes": float(b.mean()),
            "bytes_p95": float(np.percentile(b, 95))}


def best_measured(ped2_rows: list[dict], measured: dict, sel: dict, max_drop: float) -> dict | None:
    """The fewest measured bytes per frame among split settings whose measured drop is within the limit and
    whose predicted frame rate (this selection's candidate of the same setting) meets the floor (when none
    does, the floor is dropped and `floor_met` says so). A setting the analysis did not measure is not counted."""
    fps_ok = {(c["cut"], c["bits"], c["coder"]): c["fps_ok"] for c in sel["candidates"]}
    pool = [{"cut": r["cut"], "bits": r["bits"], "coder": r["coder"], "bytes": r["bytes_per_frame"],
             "drop": r["auroc_drop"], "source": "bench/ped2.py"}
            for r in ped2_rows if r["method"] == "split" and r.get("auroc_drop") is not None]
    pool += [dict(m, source="this run (artifact)") for m in measured.values()]
    within = [p for p in pool if p["drop"] <= max_drop and (p["cut"], p["bits"], p["coder"]) in fps_ok]
    ok = [p for p in within if fps_ok[p["cut"], p["bits"], p["coder"]]]
    if ok:
        return dict(min(ok, key=lambda p: p["bytes"]), floor_met=True)
    # No setting reaches the floor: the selection then runs as fast as it can within the drop limit, which on a
    # link-bound pipeline means the fewest bytes; the yardstick is the same without the floor.
    return dict(min(within, key=lambda p: p["bytes"]), floor_met=False) if within else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analysis", type=Path, default=REPO / "reports" / "mobilenet_v2" / "analysis.json")
    parser.add_argument("--ped2", type=Path, default=RESULTS / "ped2.json")
    parser.add_argument("--links", default=",".join(LINKS), help="comma-separated link rates (default 1, 5, 50 Mbit)")
    parser.add_argument("--scenario", action="append", help="DEVICE:FPS, repeatable (default rpi4:0 and "
                        "jetson-orin-nano:10; fps 0 = no floor)")
    parser.add_argument("--rtt", default="20ms")
    parser.add_argument("--max-drop", type=float, default=1.0, help="AUROC points (default 1)")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "analyze"),
                        help="the analysis cache, for its scorer fit (default .cache/analyze; '' to refit)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "autosplit", help="where the artifacts go")
    parser.add_argument("--out", type=Path, default=RESULTS / "autosplit.json")
    args = parser.parse_args(argv)
    for p in (args.analysis, args.ped2):
        if not p.exists():
            raise SystemExit(f"bench/autosplit.py: {p} is missing (see the module docstring for how to make it)")

    from rich.console import Console
    from rich.table import Table

    from splitter.export import SplitConfig, Splitter
    from splitter.selection import select

    start = time.perf_counter()
    analysis = json.loads(args.analysis.read_text())
    ped2 = json.loads(args.ped2.read_text())
    if analysis["model"] != ped2["model"] or list(analysis["input_size"]) != list(ped2["input_size"]):
        raise SystemExit("the analysis and ped2.json are of different models or input sizes")
    if analysis["eval"]["stride"] != ped2["stride"]:
        print(f"note: the analysis scored every {analysis['eval']['stride']}th frame, bench/ped2.py every "
              f"{ped2['stride']}th: predicted and measured are on different frames", file=sys.stderr)
    max_drop = args.max_drop / 100.0
    links = [x.strip() for x in args.links.split(",") if x.strip()]
    scenarios = [scenario(s) for s in (args.scenario or SCENARIOS)]
    sels = [(dev, fps, link, select(analysis, link, args.rtt, dev, max_drop=max_drop, fps=fps))
            for dev, fps in scenarios for link in links]

    cfg = dict(analysis["config"])  # as the analysis ran (its cache keys hold this very configuration)
    cfg["heldout"] = tuple(cfg["heldout"])
    if cfg["input_size"] is not None:
        cfg["input_size"] = tuple(cfg["input_size"])
    sp = Splitter(SplitConfig(**cfg))
    if args.cache:  # the scorer fitted by the analysis, from its cache (the same fit; refitting takes minutes)
        from splitter.analyze import _Analysis

        _Analysis(sp, analysis["bits"], analysis["coders"], [], analysis["eval"]["stride"], Path(args.cache),
                  progress=False).scorer()
    measured = {}
    for _, _, _, sel in sels:
        c = sel["choice"]
        key = (c["cut"], c["bits"], c["coder"])
        if key not in measured:
            print(f"exporting and measuring {key} ...", file=sys.stderr, flush=True)
            m = measure(export_choice(sp, analysis, c, args.work), ped2["stride"])
            measured[key] = dict(m, cut=c["cut"], bits=c["bits"], coder=c["coder"], drop=ped2["unsplit_auroc"] - m["auroc"])

    results = []
    for dev, fps, link, sel in sels:
        c = sel["choice"]
        m = measured[c["cut"], c["bits"], c["coder"]]
        best = best_measured(ped2["rows"], measured, sel, max_drop)
        ratio = None if best is None else m["bytes"] / best["bytes"]
        results.append({
            "device": dev, "fps_floor": fps, "link": link, "bandwidth_bps": sel["bandwidth_bps"],
            "choice": {k: c[k] for k in ("cut", "bits", "coder", "kind")}, "feasible": sel["feasible"],
            "reason": sel["reason"],
            "predicted": {"bytes": c["bytes"], "auroc": c["auroc"], "drop": c["drop"], "drop_lo": c["drop_lo"],
                          "drop_hi": c["drop_hi"], "latency_ms": c["latency_ms"], "fps_bound": c["fps_bound"]},
            "measured": {k: m[k] for k in ("artifact_id", "frames", "bytes", "bytes_p95", "auroc", "drop")},
            "best_measured": best, "bytes_over_best": ratio,
            "pass": bool(ratio is not None and ratio <= TOLERANCE and m["drop"] <= max_drop),
        })

    table = Table(title=f"split --auto on {analysis['model']} {analysis['input_size'][0]}x{analysis['input_size'][1]}: "
                        f"predicted vs measured (max drop {args.max_drop:g} pt, RTT {args.rtt})")
    for col in ("device / fps floor", "link", "choice", "B/frame pred", "B/frame meas", "AUROC pred", "AUROC meas",
                "best measured", "x best", "fps", "ok"):
        table.add_column(col, justify="right" if col not in ("choice", "best measured") else "left")
    for r in results:
        c, p, m, b = r["choice"], r["predicted"], r["measured"], r["best_measured"]
        table.add_row(
            f"{r['device']} / {r['fps_floor']:g}", r["link"],
            f"{c['cut']} {c['bits']}b {c['coder']}" + ("" if r["feasible"] else " (fallback)"),
            f"{p['bytes']:,.0f}", f"{m['bytes']:,.0f}", f"{p['auroc']:.3f}", f"{m['auroc']:.3f}",
            "—" if b is None else f"{b['cut']} {b['bits']}b {b['coder']} {b['bytes']:,.0f}"
            + ("" if b["floor_met"] else " (floor unmet)"),
            "—" if r["bytes_over_best"] is None else f"{r['bytes_over_best']:.2f}", f"{p['fps_bound']:.1f}",
            "yes" if r["pass"] else "NO")
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    doc = {
        "benchmark": "autosplit", "analysis": str(args.analysis.relative_to(REPO) if args.analysis.is_relative_to(REPO)
                                                  else args.analysis),
        "ped2": str(args.ped2.relative_to(REPO) if args.ped2.is_relative_to(REPO) else args.ped2),
        "unsplit_auroc": ped2["unsplit_auroc"], "max_drop": max_drop, "rtt": args.rtt, "tolerance": TOLERANCE,
        "results": results, "git": git_revision(), "machine": machine_info(), "command": " ".join(sys.argv),
        "runtime_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
