"""Write up an analysis (splitter.analyze): report.md, analysis.json and the plots.

Nothing here measures anything: it reads the analysis dict and the selections made from it
(splitter.selection), so a report can be rewritten from a saved analysis.json.

Plots (matplotlib, Agg):
  info_plane.png  per cut and bit depth, x = H(T) (factorized entropy, bits per frame), y = the
                  I(T;Y) lower bound with its standard error; the float activations as crosses
  rate_depth.png  ideal (factorized entropy) and zstd bytes per frame against depth, per bit depth
  latency.png     the predicted latency per cut at 1, 5 and 50 Mbit/s, stacked by stage
  pareto.png      bytes per frame against the fidelity drop, coloured by latency; the front outlined
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from splitter.flow import dpi_check, dpi_envelope
from splitter.selection import select

LINKS = (1e6, 5e6, 50e6)
STAGES = ("head_ms", "encode_ms", "transfer_ms", "rtt_ms", "decode_ms", "tail_ms")
PLOTS = ("info_plane.png", "rate_depth.png", "latency.png", "pareto.png")


def selections(analysis: dict, device, rtt_ms: float, max_drop: float, fps: float, objective: str = "bytes",
               links=LINKS) -> list[dict]:
    """select() at each link rate, without the long candidate lists (the report keeps the front)."""
    out = []
    for bw in links:
        s = select(analysis, bw, rtt_ms, device, max_drop=max_drop, fps=fps, objective=objective)
        out.append({k: v for k, v in s.items() if k != "candidates"})
    return out


def dpi(analysis: dict) -> dict:
    """The data-processing check on the float-activation bounds, cuts in depth order.

    Every cut is a prefix of one topological order of the graph, so the state crossing a deeper cut is a
    function of the state crossing a shallower one: I(T;Y) can only fall with depth along this chain,
    multi-tensor cuts included (they carry the whole state). The probe sees per-channel summaries of T,
    not T, so a deeper layer whose summaries say more than a shallower one's is a limit of the probe.
    """
    cuts = [c for c in sorted(analysis["cuts"], key=lambda c: c["index"]) if c.get("float_info")]
    est = [(c["name"], c["float_info"]["estimate"], c["float_info"]["stderr"]) for c in cuts]
    violations = dpi_check(est, z=2.0)
    return {
        "chain": [n for n, _, _ in est],
        "estimates": [v for _, v, _ in est],
        "stderr": [s for _, _, s in est],
        "envelope": dpi_envelope([v for _, v, _ in est]).tolist(),
        "violations": [{"shallow": v.shallow, "deep": v.deep, "excess": v.excess, "sigma": v.sigma}
                       for v in violations],
    }


def _mb(bw: float) -> str:
    return f"{bw / 1e6:g} Mbit/s"


def write(analysis: dict, out: str | Path, device="rpi4", rtt_ms: float = 20.0, max_drop: float = 0.01,
          fps: float = 0.0, objective: str = "bytes") -> dict:
    """report.md, analysis.json (the analysis plus the selections and the DPI check) and the PNGs in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sels = selections(analysis, device, rtt_ms, max_drop, fps, objective)
    check = dpi(analysis)
    doc = dict(analysis, selections=sels, dpi=check,
               selection_settings={"device": device if isinstance(device, str) else device.get("name"),
                                   "rtt_ms": rtt_ms, "max_drop": max_drop, "fps": fps, "objective": objective})
    (out / "analysis.json").write_text(json.dumps(strict(doc), indent=1, allow_nan=False) + "\n")
    plots(analysis, sels, out, device, rtt_ms, max_drop)
    (out / "report.md").write_text(markdown(doc))
    return doc


def strict(o):
    """The structure with numpy scalars as Python numbers and inf/nan as None: strict JSON."""
    if isinstance(o, dict):
        return {k: strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


# ---------------------------------------------------------------------------------------------- text


def markdown(doc: dict) -> str:
    a = doc
    ev, found, ref = a["eval"], a["cuts_found"], a["reference"]
    anomaly = a["task"] == "anomaly"
    st = a["selection_settings"]
    h, w = a["input_size"]
    lines = [
        f"# infocut analysis: {a['model']} at {h}x{w} ({a['task']})", "",
        f"Candidate cuts found: **{found['total']}**: {found['stage']} between stages, {found['inner']} inside a stage "
        f"with one tensor crossing, {found['multi']} multi-tensor cuts across a skip connection. "
        f"Analysed here: {len(a['cuts'])} cuts x {len(a['bits'])} bit depths ({', '.join(map(str, a['bits']))}) "
        f"x {len(a['coders'])} coders ({', '.join(a['coders'])}).", "",
        f"Evaluation: {ev['frames']} scored Ped2 test frames ({ev['anomalous']} anomalous), one frame in {ev['stride']} "
        f"of each of the {len(ev['videos'])} test videos, {ev['computed_frames']} frames computed (motion gap {ev['gap']}). "
        f"A raw RGB frame at the camera's native size is {a['raw_frame_bytes']:,} bytes.", "",
    ]
    if anomaly:
        lines.append(f"Unsplit detector: frame AUROC {ref['auroc']:.3f} [{ref['auroc_lo']:.3f}, {ref['auroc_hi']:.3f}]; "
                     f"I(Y; score) >= {ref['info']['estimate']:.3f} ± {ref['info']['stderr']:.3f} bits of "
                     f"H(Y) = {ref['h_y']:.3f} bits.")
    else:
        lines.append(f"Unsplit model: {ref['top1_classes']} distinct top-1 classes on these frames "
                     f"(the most common on {ref['top1_most_common_share']:.0%}).")
    lines += ["", f"## Selection ({st['device']}, RTT {st['rtt_ms']:g} ms, max drop {st['max_drop']:.3f}, "
                  f"fps floor {st['fps']:g}, objective: {st['objective']})", ""]
    lines += ["| link | cut | bits | coder | B/frame (p95) | drop [95% CI] | latency ms | fps bound | feasible |",
              "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for s in doc["selections"]:
        c = s["choice"]
        ci = "" if c.get("drop_lo") is None else f" [{c['drop_lo']:+.3f}, {c['drop_hi']:+.3f}]"
        lines.append(f"| {_mb(s['bandwidth_bps'])} | {c['cut']} | {c['bits']} | {c['coder']} | "
                     f"{c['bytes']:,.0f} ({c['bytes_p95']:,.0f}) | {c['drop']:+.3f}{ci} | {c['latency_ms']:.0f} | "
                     f"{c['fps_bound']:.1f} | {'yes' if s['feasible'] else '**NO (fallback)**'} |")
    lines.append("")
    for s in doc["selections"]:
        lines.append(f"- **{_mb(s['bandwidth_bps'])}**: {s['reason']}")
    lines += ["", "## Per cut", "",
              "Head cost (FLOPs, parameters, peak activation memory, onnxruntime ms here) and, per bit depth, ideal / "
              "zstd bytes per frame, the I(T;Y) bound in bits (through the detector; a * marks the linear probe, "
              "where the fidelity was not measured) and the fidelity drop; I float: the linear probe's bound at the "
              "float activations (the per-layer view of the data-processing check).", ""]
    bits = a["bits"]
    lines.append("| cut | kind | tensors | MFLOPs | params | peak MB | head ms | tail ms | I float | "
                 + " | ".join(f"{b} bit: ideal / zstd B, I, drop" for b in bits) + " |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(bits))
    rows = {(r["cut"], r["bits"]): r for r in a["rows"]}
    for c in a["cuts"]:
        k = c["cost"]
        fi = c.get("float_info")
        cells = []
        for b in bits:
            r = rows[c["name"], b]
            zs = r["coded"].get("zstd", next(iter(r["coded"].values())))
            drop = "dominated" if r["dominated"] else ("—" if r["drop"] is None else f"{r['drop']:+.3f}")
            star = "*" if r.get("info_kind", "linear") == "linear" else ""
            cells.append(f"{r['ideal_bytes']:,.0f} / {zs['mean_bytes']:,.0f}, {r['info']['estimate']:.3f}{star}, "
                         f"{drop}")
        shapes = " + ".join("x".join(map(str, t["shape"])) for t in c["tensors"])
        lines.append(f"| {c['name']} | {c['kind']} | {shapes} | {k['flops'] / 1e6:,.0f} | {k['params']:,} | "
                     f"{k['peak_bytes'] / 1e6:.1f} | {k['head_ms']:.1f} | {k['tail_ms']:.1f} | "
                     f"{'—' if fi is None else format(fi['estimate'], '.3f')} | " + " | ".join(cells) + " |")
    d = doc["dpi"]
    lines += ["", "## Data-processing check", "",
              "I(T;Y) can only fall with depth: every cut is a prefix of one topological order of the graph, so the "
              "state crossing a deeper cut is a function of the state crossing a shallower one (multi-tensor cuts "
              "carry the whole state). flow.dpi_check on the float-activation bounds, cuts in depth order, flags "
              "every pair where the deeper bound exceeds the shallower by more than 2 combined standard errors.", ""]
    if "info" in a["reference"]:
        ri = a["reference"]["info"]
        lines += [f"The float bounds here are the linear probe's, and they are weak: per-channel means and maxima "
                  f"of a feature map say little about a small object in one corner. The detector reads far more: the "
                  f"unsplit score, a function of every cut's float T, gives I(T;Y) >= {ri['estimate']:.3f} ± "
                  f"{ri['stderr']:.3f} bits at every cut (of H(Y) = {a['reference']['h_y']:.3f}); the quantized "
                  "settings' bounds in the table above are read the same way.", ""]
    if d["violations"]:
        lines.append(f"**{len(d['violations'])} violation(s) beyond 2 sigma** (the probe sees per-channel summaries "
                     "of T, not T: a deeper layer whose summaries are more linearly telling breaks the "
                     "inequality for the probe, not for the information):")
        lines.append("")
        for v in d["violations"][:40]:
            lines.append(f"- {v['shallow']} -> {v['deep']}: +{v['excess']:.3f} bits ({v['excess'] / v['sigma']:.1f} sigma)")
        if len(d["violations"]) > 40:
            lines.append(f"- ... and {len(d['violations']) - 40} more (analysis.json, dpi.violations)")
    else:
        lines.append("No violation beyond 2 sigma.")
    lines += ["", "flow.dpi_envelope (the running max from deep to shallow, itself a valid and tighter lower bound "
                  "at each cut):", "", "| cut | I(T;Y) bound | stderr | envelope |", "|---|---:|---:|---:|"]
    for n, v, s, e in zip(d["chain"], d["estimates"], d["stderr"], d["envelope"]):
        lines.append(f"| {n} | {v:.3f} | {s:.3f} | {e:.3f} |")
    lines += ["", "## Figures", "", "![information plane](info_plane.png)", "", "![rate against depth](rate_depth.png)",
              "", "![latency per cut](latency.png)", "", "![Pareto front](pareto.png)", "",
              "## How each figure was measured", ""]
    for k, v in a["how"].items():
        lines.append(f"- **{k}**: {v}")
    lines += [
        "- **latency**: cost.predict_latency: head and encoder ms measured here x the device's speed factor "
        "(splitter/devices.json), transfer = bytes x 8 / bandwidth, one RTT, decoder and tail ms measured here "
        "(the cloud taken as fast as this machine); the fps bound is the slowest stage's rate.",
        "- **selection**: feasible = drop <= max drop (point estimate) and fps bound >= fps; the choice has the "
        "fewest bytes (objective bytes) or the lowest latency (objective latency) among the feasible.",
        "",
        f"Machine: {a['machine']['cpu']} ({a['machine']['cpus']} CPUs), onnxruntime {a['machine']['onnxruntime']}. "
        f"This run: {a['run']['wall_s']:.0f} s, {a['run']['cached']} results from the cache, "
        f"{a['run']['computed']} computed.", "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots


def _finish(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plots(analysis: dict, sels: list[dict], out: Path, device, rtt_ms: float, max_drop: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "legend.fontsize": 8, "font.size": 9, "savefig.dpi": 120})
    a = analysis
    cuts = sorted(a["cuts"], key=lambda c: c["index"])
    names = [c["name"] for c in cuts]
    rows = {(r["cut"], r["bits"]): r for r in a["rows"]}
    bits = sorted(a["bits"])
    cmap = plt.get_cmap("viridis")
    color = {b: cmap(i / max(len(bits) - 1, 1)) for i, b in enumerate(bits)}
    title = f"{a['model']} {a['input_size'][0]}x{a['input_size'][1]}"

    # information plane: left, every (cut, bits) as H(T) against its I(T;Y) bound; right, the bound per layer
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    # Only the settings read through the detector: a dominated setting's linear-probe bound is another, far
    # looser estimator and would read as information lost.
    read = {(n, b) for n in names for b in bits if rows[n, b].get("info_kind") == "detector"}
    for b in bits:
        sel = [n for n in names if (n, b) in read]
        if sel:
            ax.errorbar([rows[n, b]["ideal_bytes"] * 8 for n in sel], [rows[n, b]["info"]["estimate"] for n in sel],
                        yerr=[rows[n, b]["info"]["stderr"] for n in sel], fmt="o", ms=4, color=color[b],
                        alpha=0.8, elinewidth=0.6, label=f"{b} bits")
    for c in cuts:  # each cut's bit depths joined, so a cut reads as one curve from 2 to 8 bits
        mine = [rows[c["name"], b] for b in bits if (c["name"], b) in read]
        if not mine:
            continue
        ax.plot([r["ideal_bytes"] * 8 for r in mine], [r["info"]["estimate"] for r in mine], color="grey", lw=0.4,
                alpha=0.5, zorder=0)
        ax.annotate(c["name"], (mine[-1]["ideal_bytes"] * 8, mine[-1]["info"]["estimate"]), fontsize=5, alpha=0.7,
                    xytext=(3, 2), textcoords="offset points")
    ref = a["reference"]
    if "info" in ref:
        ax.axhline(ref["info"]["estimate"], color="black", lw=0.8, ls="--", label="unsplit detector")
        ax.axhline(ref["h_y"], color="black", lw=0.8, ls=":", label="H(Y)")
    ax.set_xscale("log")
    ax.set_xlabel("H(T): factorized entropy of the codes, bits per frame")
    ax.set_ylabel("I(T;Y) lower bound, bits (probe, ±1 s.e.)")
    ax.set_title(f"Information plane, {title} (settings dearer than the raw frame not shown)")
    ax.legend(fontsize=7)
    d = dpi(analysis)
    xd = np.arange(len(d["chain"]))
    ax2.errorbar(xd, d["estimates"], yerr=d["stderr"], fmt="o", ms=3, color="tab:blue", elinewidth=0.6,
                 label="linear probe on the float activations")
    ax2.plot(xd, d["envelope"], color="tab:orange", lw=1, label="envelope (max over deeper cuts)")
    if "info" in ref:  # the unsplit score is a function of every cut's float T: a bound at each of them
        ax2.axhline(ref["info"]["estimate"], color="black", lw=0.8, ls="--",
                    label="unsplit detector (a bound at every cut)")
        ax2.axhline(ref["h_y"], color="black", lw=0.8, ls=":", label="H(Y)")
    ax2.set_xticks(xd, d["chain"], rotation=90, fontsize=5)
    ax2.set_ylabel("I(T;Y) lower bound, bits")
    ax2.set_title("Per layer, float activations (depth order)")
    ax2.legend(fontsize=7)
    _finish(fig, out / "info_plane.png")

    # rate against depth
    fig, ax = plt.subplots(figsize=(10, 5))
    x = np.arange(len(names))
    for b in bits:
        ax.plot(x, [rows[n, b]["ideal_bytes"] for n in names], "--", color=color[b], lw=1)
        z = [rows[n, b]["coded"].get("zstd", {}).get("mean_bytes", np.nan) for n in names]
        ax.plot(x, z, "-o", ms=3, color=color[b], lw=1, label=f"{b} bits: zstd (solid), ideal (dashed)")
    ax.axhline(a["raw_frame_bytes"], color="black", lw=0.8, ls=":", label="raw RGB frame")
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylabel("bytes per frame")
    ax.set_title(f"Rate against depth, {title}")
    ax.legend(fontsize=7)
    _finish(fig, out / "rate_depth.png")

    # latency breakdown: per cut, its cheapest setting within the drop limit (8 bits zstd if none)
    from splitter.selection import candidates

    fig, axes = plt.subplots(len(LINKS), 1, figsize=(10, 3 * len(LINKS)), sharex=True)
    stage_colors = dict(zip(STAGES, ("tab:blue", "tab:cyan", "tab:orange", "tab:grey", "tab:olive", "tab:purple")))
    for ax, bw in zip(np.atleast_1d(axes), LINKS):
        cands = [c for c in candidates(a, bw, rtt_ms, device, max_drop=max_drop) if c["coder"] == "zstd"]
        per = {}
        for n in names:
            mine = [c for c in cands if c["cut"] == n]
            ok = [c for c in mine if c["drop_ok"]]
            if mine:
                per[n] = min(ok, key=lambda c: c["bytes"]) if ok else max(mine, key=lambda c: c["bits"])
        bottom = np.zeros(len(names))
        for s in STAGES:
            vals = [per[n]["latency"][s] if n in per else 0.0 for n in names]
            ax.bar(x, vals, bottom=bottom, color=stage_colors[s], label=s.removesuffix("_ms"), width=0.8)
            bottom += np.asarray(vals)
        ax.set_ylabel("ms")
        ax.set_title(f"{_mb(bw)}: predicted latency per cut ({device if isinstance(device, str) else device['name']}, "
                     f"RTT {rtt_ms:g} ms; zstd at the cut's fewest-bytes bits within the drop limit)", fontsize=8)
    np.atleast_1d(axes)[0].legend(ncol=6, fontsize=7)
    np.atleast_1d(axes)[-1].set_xticks(x, names, rotation=90, fontsize=6)
    _finish(fig, out / "latency.png")

    # Pareto front at the middle link
    mid = sels[len(sels) // 2] if sels else None
    bw = mid["bandwidth_bps"] if mid else 5e6
    cands = candidates(a, bw, rtt_ms, device, max_drop=max_drop)
    fig, ax = plt.subplots(figsize=(8, 5))
    if cands:
        sc = ax.scatter([c["bytes"] for c in cands], [c["drop"] for c in cands], c=[c["latency_ms"] for c in cands],
                        cmap="plasma", s=14)
        fig.colorbar(sc, ax=ax, label=f"latency ms at {_mb(bw)}")
        from splitter.selection import pareto

        front = sorted((cands[i] for i in pareto(cands)), key=lambda c: c["bytes"])
        ax.scatter([c["bytes"] for c in front], [c["drop"] for c in front], facecolors="none", edgecolors="black",
                   s=40, label="Pareto front (bytes, drop, latency)")
        if mid:
            ch = mid["choice"]
            ax.scatter([ch["bytes"]], [ch["drop"]], marker="*", s=160, color="red", label=f"choice: {ch['cut']} "
                       f"{ch['bits']} bits {ch['coder']}")
    ax.axhline(max_drop, color="red", lw=0.8, ls="--", label="max drop")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per frame (mean, coded)")
    ax.set_ylabel("fidelity drop vs unsplit")
    ax.set_title(f"Pareto front, {title}")
    ax.legend(fontsize=7)
    _finish(fig, out / "pareto.png")
