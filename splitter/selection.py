"""Choose a (cut, bits, coder) for a link and an edge device from an analysis (splitter.analyze).

Every measured setting becomes a candidate with a predicted latency (cost.predict_latency: head and
encoder times measured on this machine scaled by the device's speed factor, the coded frame's
transfer at the link rate, one round trip, decoder and tail times measured here, taken as the
cloud's) and a throughput bound (the slowest pipeline stage). A candidate is feasible when its
fidelity loss is within `max_drop` (the point estimate; whether the bootstrap interval's upper end
is too is reported beside it) and its throughput bound reaches `fps` (0, the default: no floor; the
answer states the frame rate the choice sustains either way).

The product is about frugal links, so by default the choice is the feasible setting with the
fewest bytes per frame (ties by latency); objective="latency" takes the fastest instead. The
answer says why in words: what bound, the runner-up, and what the next cheaper setting would lose.
When nothing is feasible it says which constraint no setting meets and falls back, loudly, to the
setting with the highest throughput bound among those within the drop limit (running the camera at
the rate the link and device allow), or the smallest drop when none is.

Only the analysis dict is read, so a hand-made one works: it needs "rows", each with cut, bits,
coded {coder: {mean_bytes, p95_bytes, encode_ms, decode_ms}}, head_ms, tail_ms, drop (None when
not measured), drop_hi (None when there is no interval) and dominated.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from splitter.cost import load_device, parse_bandwidth, parse_duration, predict_latency

OBJECTIVES = ("bytes", "latency")


def _label(c: dict) -> str:
    return f"{c['cut']} at {c['bits']} bits, {c['coder']}"


def _fmt_drop(c: dict) -> str:
    s = f"{c['drop']:+.3f}"
    if c.get("drop_lo") is not None and c.get("drop_hi") is not None:
        s += f" [{c['drop_lo']:+.3f}, {c['drop_hi']:+.3f}]"
    return s


def candidates(analysis: dict, bandwidth_bps, rtt_ms, device, fps: float = 0.0, max_drop: float = 0.01,
               cloud: str | dict = "here") -> list[dict]:
    """Every measured (cut, bits, coder) with its predicted latency, throughput bound and constraint checks."""
    bw = parse_bandwidth(bandwidth_bps)
    rtt = parse_duration(rtt_ms)
    dev = device if isinstance(device, dict) else load_device(device)
    srv = cloud if isinstance(cloud, dict) else load_device(cloud)
    f, g = dev["speed_factor"], srv["speed_factor"]
    out = []
    for row in analysis["rows"]:
        if row.get("dominated") or row.get("drop") is None:
            continue
        for coder, c in row["coded"].items():
            lat = predict_latency(
                row["head_ms"] * f, c["mean_bytes"], bw, rtt, decode_ms=c["decode_ms"] * g,
                tail_ms=row["tail_ms"] * g, encode_ms=c["encode_ms"] * f,
            )
            drop_hi = row.get("drop_hi")
            cand = {
                "cut": row["cut"], "bits": row["bits"], "coder": coder, "kind": row.get("kind"),
                "bytes": c["mean_bytes"], "bytes_p95": c["p95_bytes"],
                "drop": row["drop"], "drop_lo": row.get("drop_lo"), "drop_hi": drop_hi,
                "auroc": row.get("auroc"),
                "latency": asdict(lat), "latency_ms": lat.total_ms, "fps_bound": lat.fps_bound,
                "drop_ok": row["drop"] <= max_drop,
                "drop_hi_ok": None if drop_hi is None else drop_hi <= max_drop,
                "fps_ok": lat.fps_bound >= fps,
            }
            cand["feasible"] = cand["drop_ok"] and cand["fps_ok"]
            out.append(cand)
    return out


def pareto(cands: list[dict]) -> list[int]:
    """Indices of the candidates no other beats on all of (bytes, drop, latency) and strictly on one."""
    keys = [(c["bytes"], c["drop"], c["latency_ms"]) for c in cands]
    front = []
    for i, a in enumerate(keys):
        if not any(all(x <= y for x, y in zip(b, a)) and b != a for b in keys):
            front.append(i)
    return front


def select(analysis: dict, bandwidth_bps, rtt_ms, device, max_drop: float = 0.01, fps: float = 0.0,
           objective: str = "bytes", cloud: str | dict = "here") -> dict:
    """The setting to deploy on `device` over a link of `bandwidth_bps` (a number, or '5Mbit') and
    `rtt_ms` ('20ms'), losing at most `max_drop` of fidelity (AUROC, or 1 - top-1 agreement) and
    sustaining `fps`. Returns the choice, the runner-up, every candidate with its checks, the Pareto
    front over (bytes, drop, latency), and `reason`, the why in plain words."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    dev = device if isinstance(device, dict) else load_device(device)
    bw, rtt = parse_bandwidth(bandwidth_bps), parse_duration(rtt_ms)
    cands = candidates(analysis, bw, rtt, dev, fps, max_drop, cloud)
    if not cands:
        raise ValueError("no measured setting to choose from: every (cut, bits) is dominated by the raw frame "
                         "or has no fidelity measurement")
    for i in pareto(cands):
        cands[i]["pareto"] = True
    for c in cands:
        c.setdefault("pareto", False)
    order = (lambda c: (c["bytes"], c["latency_ms"])) if objective == "bytes" else (
        lambda c: (c["latency_ms"], c["bytes"]))
    ranked = sorted(cands, key=order)
    feasible = [c for c in ranked if c["feasible"]]
    link = (f"{dev['name']} (speed factor {dev['speed_factor']:g}, {dev.get('source', '?')}), "
            f"{bw / 1e6:g} Mbit/s, {rtt:g} ms RTT")
    result = {
        "bandwidth_bps": bw, "rtt_ms": rtt, "device": {k: dev.get(k) for k in ("name", "speed_factor", "source")},
        "max_drop": max_drop, "fps": fps, "objective": objective,
        "candidates": ranked, "pareto": [c for c in ranked if c["pareto"]],
        "feasible_count": len(feasible),
    }
    if feasible:
        choice = feasible[0]
        # the runner-up is another (cut, bits) when there is one: the same codes with another coder say less
        others = [c for c in feasible[1:] if (c["cut"], c["bits"]) != (choice["cut"], choice["bits"])]
        runner = others[0] if others else (feasible[1] if len(feasible) > 1 else None)
        result.update(choice=choice, runner_up=runner, feasible=True, fallback=False, warning=None,
                      reason=_why(choice, runner, ranked, objective, max_drop, fps, link, len(feasible)))
        return result
    # Nothing feasible: name the constraint no setting meets, then fall back to the best throughput.
    if not any(c["drop_ok"] for c in cands):
        best = min(cands, key=lambda c: c["drop"])
        what = (f"no setting keeps the fidelity drop within {max_drop:.3f} (the smallest is {best['drop']:+.3f}, "
                f"{_label(best)})")
    elif not any(c["fps_ok"] for c in cands):
        best = max(cands, key=lambda c: c["fps_bound"])
        what = f"no setting sustains {fps:g} fps (the most is {best['fps_bound']:.1f} fps, {_label(best)})"
    else:
        what = (f"settings within the drop limit of {max_drop:.3f} all sustain less than {fps:g} fps, and those "
                f"fast enough all lose more than {max_drop:.3f}")
    within = [c for c in cands if c["drop_ok"]]
    if within:
        choice, how = max(within, key=lambda c: (c["fps_bound"], -c["bytes"])), "the highest throughput within the drop limit"
    else:
        choice, how = min(cands, key=lambda c: (c["drop"], c["bytes"])), "the smallest drop"
    warning = (f"NO FEASIBLE SETTING on {link}: {what}. Falling back to {how}: {_label(choice)} "
               f"({choice['bytes']:,.0f} B/frame, drop {_fmt_drop(choice)}, {choice['fps_bound']:.1f} fps, "
               f"{choice['latency_ms']:.0f} ms). It does NOT meet the constraints.")
    result.update(choice=choice, runner_up=None, feasible=False, fallback=True, warning=warning, reason=warning)
    return result


def _why(choice: dict, runner: dict | None, ranked: list[dict], objective: str, max_drop: float, fps: float,
         link: str, n_feasible: int) -> str:
    c = choice
    parts = [
        f"{_label(c)}: {c['bytes']:,.0f} B/frame (p95 {c['bytes_p95']:,.0f}), fidelity drop {_fmt_drop(c)}, "
        f"{c['latency_ms']:.0f} ms end to end and up to {c['fps_bound']:.1f} fps on {link}."
    ]
    what = "fewest bytes per frame" if objective == "bytes" else "lowest latency"
    floor = f" and >= {fps:g} fps" if fps > 0 else ""
    parts.append(f"It is the feasible setting with the {what} ({n_feasible} of {len(ranked)} candidates are feasible: "
                 f"drop <= {max_drop:.3f}{floor}).")
    better = ranked[: ranked.index(c)]  # ranked ahead of the choice by the objective, all infeasible
    if better:
        by_drop = sum(not b["drop_ok"] for b in better)
        by_fps = sum(not b["fps_ok"] for b in better)
        bound = []
        if by_drop:
            bound.append(f"the drop limit ({by_drop} of them)")
        if by_fps:
            bound.append(f"the {fps:g} fps floor ({by_fps})")
        nxt = better[-1]
        fails = [f"drop {_fmt_drop(nxt)}" + (" > limit" if not nxt["drop_ok"] else "")]
        if not nxt["fps_ok"]:
            fails.append(f"only {nxt['fps_bound']:.1f} fps")
        word = "cheaper" if objective == "bytes" else "faster"
        parts.append(f"What bound: {' and '.join(bound)} excluded the {len(better)} {word} settings; the next "
                     f"{word} one, {_label(nxt)} ({nxt['bytes']:,.0f} B/frame, {nxt['latency_ms']:.0f} ms), has "
                     f"{', '.join(fails)}.")
    else:
        parts.append("Nothing bound: it is the best of all measured settings by that objective.")
    if runner is not None:
        parts.append(f"Runner-up: {_label(runner)}, {runner['bytes']:,.0f} B/frame, drop {_fmt_drop(runner)}, "
                     f"{runner['latency_ms']:.0f} ms.")
    if c["drop_hi_ok"] is False:
        parts.append(f"Caution: the interval's upper end ({c['drop_hi']:+.3f}) exceeds the limit: the drop is within "
                     "it as a point estimate only.")
    elif c["drop_hi_ok"]:
        parts.append("The whole 95% interval of the drop is within the limit.")
    if not math.isfinite(c["fps_bound"]):
        parts.append("(Throughput unbounded: every stage measured as free.)")
    return " ".join(parts)
