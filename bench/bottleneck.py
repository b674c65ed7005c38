"""bench/ped2.py's bottleneck and prune rows: learned bottlenecks and entropy-guided channel pruning at a cut.

The same detector and test frames as bench/ped2.py (MobileNetV2 to block5 at 480x720, k-NN motion scorer
gap 2, topk 50, bank 1024; every 2nd frame of the 6 Ped2 test videos, each scored against the frame
`gap` back). The float activations at the cut and the teacher's block5 features are computed once with
torch and cached (.cache/bottleneck), for the fit videos (all frames: distillation data and the scorer
fit) and the scored test frames. Per setting the scorer is fitted ON THE DECODED features of the fit
videos (through the bottleneck or the pruned cut), as `Splitter(..., scorer through the bottleneck)`
fits it for the exported artifact.

Bytes per frame: `bytes_per_frame` is the factorized entropy bound of the test codes under per-channel
tables counted on the fit videos' codes (what a static per-channel ANS coder reaches, within ~1 %);
`zstd_bytes_per_frame` is codec.encode_frame with zstd (framing included), measured.

    .venv/bin/python bench/ped2.py --methods bottleneck,prune       # merges rows into bench/results/ped2.json
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CACHE = REPO / ".cache" / "bottleneck"
STRIDE = 2
# (cut, K, stride, bits, lambda) of the rows bench/ped2.py --methods bottleneck trains and measures
GRID = (
    ("block3", 4, 2, 3, 0.3),
    ("block3", 4, 2, 3, 0.1),
)
PRUNE_GRID = (("block3", 16, 3), ("block3", 4, 3))


def detector():
    from bench.ped2 import detector_config
    from splitter.export import Splitter

    return Splitter(detector_config(), quiet=True)


def data(sp, cut: str):
    """(fit videos' cache, scored test frames' cache, labels of the scored frames) at `cut`."""
    from infocut import ped2
    from splitter.bottleneck import FeatureCache

    fc = FeatureCache(sp, cut, CACHE)
    fit = fc.get("fit", sp.training_videos(False))
    test_v = ped2.videos("testing")
    test = fc.get(f"test-stride{STRIDE}", {v: p[::STRIDE] for v, p in test_v.items()})
    lab = ped2.labels()
    labels = np.concatenate([lab[v][::STRIDE] for v in test_v])
    return fit, test, labels


def scores_through(fn, fit, test, cfg, batch: int = 8) -> tuple[np.ndarray, object]:
    """Fit the scorer on fn(cut activations) of the fit videos, score the test frames with it.
    fn: a torch module, float32 (N, C, H, W) at the cut -> scored features; run as ONNX in onnxruntime
    (as the tail runs in the cloud, and several times faster than torch on this CPU)."""
    import onnxruntime as ort
    import torch

    from splitter.onnxgraph import to_onnx
    from splitter.scorer import ScorerFit, lagged

    c0 = next(iter(fit.values()))[0]
    graph = to_onnx(fn, (torch.zeros(1, *c0.shape[1:]),), ["x"], ["f"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def feats(cut):
        return torch.from_numpy(np.concatenate([sess.run(None, {"x": cut[i : i + batch].astype(np.float32)})[0]
                                                for i in range(0, len(cut), batch)]))

    fitter = ScorerFit(gap=cfg.gap)
    for c, _ in fit.values():
        fitter.add_video(feats(c).numpy())
    scorer = fitter.build(cfg.bank_size, cfg.topk).eval()
    out = []
    for c, _ in test.values():
        f = feats(c)
        prev, has = lagged(f, cfg.gap // STRIDE)
        out.append(scorer.frame_scores(f, prev, has).numpy())
    return np.concatenate(out), scorer


def head_flops(sp, cut: str, extra=None) -> int:
    """FLOPs (splitter.cost convention) of preprocessing-free head up to `cut`, plus `extra` after it."""
    from torch import nn

    from splitter.cost import model_cost

    stages = []
    for name, m in sp.model.named_children():
        stages.append((name, m))
        if name == cut:
            break
    if extra is not None:
        stages.append(("bottleneck", extra))
    from collections import OrderedDict

    return model_cost(nn.Sequential(OrderedDict(stages)).eval(), sp.size).flops


def time_head(module, size, runs: int = 12) -> float:
    """Median ms of the head (preprocess + head [+ encoder + quantizer]) in onnxruntime, batch 1."""
    import tempfile

    import torch

    from bench.ped2 import export_session, median_ms

    frame = torch.zeros(1, *size, 3, dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        sess = export_session(module.eval(), (frame,), Path(tmp) / "h.onnx", ["image"], ["codes"], 0)
        img = frame.numpy()
        return median_ms(lambda i: sess.run(None, {"image": img}), n=runs)


def stats(labels, scores, ref_scores, boot, lengths) -> dict:
    """AUROC (raw and causally smoothed as bench/ped2.py smooths) with paired bootstrap intervals, vs `ref`."""
    from bench.ped2 import FPS, SMOOTH_SECONDS, causal_max
    from splitter.metrics import auroc

    k = (int(round(SMOOTH_SECONDS * FPS)) - 1) // STRIDE + 1

    def smooth(x):
        parts = np.split(x, np.cumsum(lengths)[:-1])
        return np.concatenate([causal_max(p, k) for p in parts])

    out = {}
    for name, s, r in (("auroc", scores, ref_scores), ("auroc_smoothed", smooth(scores), smooth(ref_scores))):
        a, samp = auroc(labels, s), boot.samples(s)
        lo, hi = boot.interval(samp)
        dlo, dhi = boot.interval(boot.samples(r) - samp)
        out.update({name: a, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_drop": auroc(labels, r) - a,
                    f"{name}_drop_lo": dlo, f"{name}_drop_hi": dhi})
    return out


def _row_cache(kind: str, **setting):
    """Where a measured row is kept (keyed by its setting and the sources that produce it), so that a rerun
    measures only what is missing."""
    from splitter.cache import Cache, digest_files

    srcs = ("splitter/bottleneck.py", "bench/bottleneck.py") if kind != "reference" else ("splitter/scorer.py",)
    key = Cache.key(kind=kind, **setting, sources=digest_files(srcs))
    return CACHE / "rows" / f"{kind}-{'-'.join(str(v) for v in setting.values())}-{key}.json"


def run(methods: list[str], grid=GRID, prune_grid=PRUNE_GRID, steps: int | None = None, console=None) -> dict:
    """Train/measure every setting (rows already measured by the same sources are reused)."""
    import torch
    from rich.console import Console

    from bench.common import Bootstrap
    from splitter import bottleneck as bn
    from splitter.cost import model_cost
    from splitter.features import progress_bar
    from splitter.graphs import HeadGraph, Quantize
    from splitter.metrics import auroc

    console = console or Console()
    torch.set_num_threads(2)
    sp = detector()
    cfg = sp.cfg
    rows, t_start = [], time.perf_counter()
    cuts = sorted({g[0] for g in grid if "bottleneck" in methods} | {g[0] for g in prune_grid if "prune" in methods})
    full_flops = model_cost(sp.model, sp.size).flops
    for cut in cuts:
        fit, test, labels = data(sp, cut)
        boot = Bootstrap(labels, draws=1000, seed=0)
        c_cut, head, tail = bn.cut_and_tail(sp, cut)
        ref_path = _row_cache("reference", cut=cut).with_suffix(".npy")
        if ref_path.exists():
            ref = np.load(ref_path)
        else:  # the float split at this cut (= unsplit up to fp16 at the cut): every row's reference
            ref, _ = scores_through(tail, fit, test, cfg)
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(ref_path, ref)
        console.print(f"{cut}: float path AUROC {auroc(labels, ref):.4f} on {len(labels)} scored frames")
        common = {"cut": cut, "cut_float_auroc": auroc(labels, ref), "head_mflops_plain_cut": head_flops(sp, cut) / 1e6,
                  "full_model_mflops": full_flops / 1e6, "block5_mflops": head_flops(sp, sp.feature_layer) / 1e6}
        common["head_ms_plain_cut"] = time_head(HeadGraph(sp.preprocess, head, [Quantize(_unit_q(c_cut.shape[0], 8))]),
                                                sp.size)
        todo = [("bottleneck", g) for g in grid if g[0] == cut and "bottleneck" in methods]
        todo += [("prune", g) for g in prune_grid if g[0] == cut and "prune" in methods]
        for kind, g in todo:
            if kind == "bottleneck":
                _, k, s, b, lam = g[:5]
                types = {f.name: f.type for f in fields(bn.BottleneckConfig)}
                opts = {key: _typed(types[key], v) for key, v in (g[5] if len(g) > 5 else {}).items()}
                bcfg = bn.BottleneckConfig(cut=cut, channels=k, stride=s, bits=b, lam=lam, gap=cfg.gap,
                                           **({"steps": steps} if steps else {}), **opts)
                path = _row_cache("bottleneck", **{k2: v for k2, v in vars(bcfg).items()})
            else:
                _, n, b = g
                path = _row_cache("prune", cut=cut, keep=n, bits=b)
            if path.exists():
                row = json.loads(path.read_text())
                console.print(f"{row['method']} {row['setting']}: cached, {row['bytes_per_frame']:,.0f} B/frame, "
                              f"AUROC {row['auroc']:.4f}")
            elif kind == "bottleneck":
                with progress_bar(console=console, transient=True) as bar:
                    model, info = bn.train(bcfg, tail, fit, progress=bar)
                meta = {"cut": cut, "train_data": "Ped2 training videos less held-out " + ",".join(cfg.heldout)
                        + ": all frames (cut activations and block5 targets cached by splitter.bottleneck.FeatureCache)",
                        **info}
                tag = "_".join(f"{key}{v}" for key, v in opts.items())
                wpath = CACHE / "weights" / f"{cut}_K{k}_s{s}_B{b}_lam{lam:g}_steps{bcfg.steps}_{tag}.safetensors"
                sha = bn.save(model, wpath, meta)
                row = _measure(sp, model, bcfg, head, tail, fit, test, labels, ref, boot, common, info, sha, wpath,
                               console)
            else:
                calib = np.concatenate([c[::5] for c, _ in fit.values()]).astype(np.float32)
                pr = bn.prune_channels(calib, n, b, percentile=cfg.percentile)
                del calib
                row = _measure_prune(sp, pr, n, b, head, tail, fit, test, labels, ref, boot, common, console)
            if not path.exists():
                from bench.common import git_revision

                row["measured_at"] = {"git": git_revision(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(row, indent=1))
            rows.append(row)
    return {"rows": rows, "seconds": time.perf_counter() - t_start}


def _typed(kind, value: str):
    kind = kind if isinstance(kind, str) else kind.__name__
    if kind == "bool":
        return value.lower() in ("1", "true", "yes")
    return {"int": int, "float": float}.get(kind, str)(value)


def _unit_q(k: int, bits: int):
    import codec

    return codec.QuantParams(bits=bits, scale=np.ones(k, np.float32), zero_point=np.zeros(k, np.float32), axis=1)


def _rates(codes_fit: dict, codes_test: dict, bits: int) -> dict:
    from splitter import bottleneck as bn

    tables = bn.code_tables(codes_fit, bits)
    test_all = np.concatenate(list(codes_test.values()))
    fb = bn.factorized_bytes(test_all, tables)
    z = bn.zstd_bytes(test_all, bits)
    return {"bytes_per_frame": float(fb.mean()), "bytes_p95": float(np.percentile(fb, 95)),
            "entropy_test_plugin_bytes": bn.empirical_entropy_bytes(test_all, bits),
            "zstd_bytes_per_frame": float(z.mean()), "zstd_bytes_p95": float(np.percentile(z, 95)),
            "code_shape": list(test_all.shape[1:])}


def _measure(sp, model, bcfg, head, tail, fit, test, labels, ref, boot, common, info, sha, wpath, console) -> dict:
    from torch import nn

    from splitter import bottleneck as bn
    from splitter.bottleneck import encode_all
    from splitter.graphs import HeadGraph, Quantize

    codes_fit, codes_test = encode_all(model, fit), encode_all(model, test)
    rates = _rates(codes_fit, codes_test, bcfg.bits)

    scores, _ = scores_through(nn.Sequential(bn.Coded(model), tail), fit, test, sp.cfg)
    q = _unit_q(bcfg.channels, bcfg.bits)
    hflops = head_flops(sp, bcfg.cut, bn.Latent(model))
    hms = time_head(HeadGraph(sp.preprocess, nn.Sequential(head, bn.Latent(model)), [Quantize(q)]), sp.size)
    st = stats(labels, scores, ref, boot, [len(c) for c, _ in test.values()])
    row = {"method": "bottleneck", "cut": bcfg.cut, "bits": bcfg.bits, "coder": "factorized-entropy-bound",
           "setting": f"{bcfg.cut} {bcfg.arch}{'+bg' if bcfg.background else ''} K={bcfg.channels} s{bcfg.stride} "
                      f"{bcfg.bits}-bit lambda={bcfg.lam:g} init={bcfg.init} step={bcfg.step:g} "
                      f"steps={bcfg.pretrain_steps}+{bcfg.steps}",
           "channels": bcfg.channels, "stride": bcfg.stride, "lambda": bcfg.lam, **rates, **st,
           "head_mflops": hflops / 1e6, "head_ms": hms, "tail_ms": None,
           "head_fraction_of_full_model": hflops / (common["full_model_mflops"] * 1e6), **common,
           "train": info, "weights": str(wpath.relative_to(REPO)) if wpath.is_relative_to(REPO) else str(wpath),
           "weights_sha256": sha, "config": {k: v for k, v in vars(bcfg).items()}}
    console.print(f"bottleneck {row['setting']}: {rates['bytes_per_frame']:,.0f} B/frame (zstd "
                  f"{rates['zstd_bytes_per_frame']:,.0f}), AUROC {st['auroc']:.4f} (drop {st['auroc_drop']:+.4f}), "
                  f"head {hflops / 1e6:,.0f} MFLOPs {hms:.1f} ms, trained {info['seconds']:.0f} s")
    return row


def _measure_prune(sp, pr, n, b, head, tail, fit, test, labels, ref, boot, common, console) -> dict:
    import torch
    from torch import nn

    import codec
    from splitter import bottleneck as bn
    from splitter.graphs import Dequantize, HeadGraph, Quantize

    sel, fill = bn.Select(pr.keep), bn.Fill(pr.keep, pr.fill)
    qz, dq = Quantize(pr.qparams), Dequantize(pr.qparams)

    def codes_of(d):
        return {v: np.concatenate([codec.quantize(c[i : i + 32, pr.keep].astype(np.float32), pr.qparams)
                                   for i in range(0, len(c), 32)]) for v, (c, _) in d.items()}

    rates = _rates(codes_of(fit), codes_of(test), b)

    scores, _ = scores_through(nn.Sequential(sel, qz, dq, fill, tail), fit, test, sp.cfg)
    st = stats(labels, scores, ref, boot, [len(c) for c, _ in test.values()])
    hflops = head_flops(sp, common["cut"])  # selecting channels is free
    hms = time_head(HeadGraph(sp.preprocess, nn.Sequential(head, sel), [Quantize(pr.qparams)]), sp.size)
    row = {"method": "prune", "cut": common["cut"], "bits": b, "coder": "factorized-entropy-bound",
           "setting": f"{common['cut']} keep {n} of {len(pr.fill)} channels {b}-bit", "channels": n, "stride": 1,
           "lambda": None, "kept_channels": pr.keep, "channel_entropy_bits": pr.entropy_bits, **rates, **st,
           "head_mflops": hflops / 1e6, "head_ms": hms, "tail_ms": None,
           "head_fraction_of_full_model": hflops / (common["full_model_mflops"] * 1e6), **common}
    console.print(f"prune {row['setting']}: {rates['bytes_per_frame']:,.0f} B/frame (zstd "
                  f"{rates['zstd_bytes_per_frame']:,.0f}), AUROC {st['auroc']:.4f} (drop {st['auroc_drop']:+.4f})")
    del torch
    return row


HOW = {
    "bottleneck_bytes": "bytes_per_frame: the factorized entropy bound, sum over the test codes of -log2 p(code) under "
                        "per-channel tables counted (add-0.5) on the codes of the fit videos, /8: what a static "
                        "per-channel ANS coder reaches within ~1 %; zstd_bytes_per_frame: codec.encode_frame zstd, "
                        "framing included, measured; entropy_test_plugin_bytes: the plug-in entropy of the test "
                        "codes themselves (per channel, i.i.d.).",
    "bottleneck_scores": "the cut activations (torch, cached fp16) -> encoder -> clamp(round) -> decoder -> frozen "
                         "block4..block5 -> k-NN motion scorer fitted on the decoded features of the fit videos "
                         "(Splitter's fit videos, all frames), on the scored test frames (stride 2, lag = gap).",
    "bottleneck_reference": "auroc_drop is against the float split at the same cut computed the same way from the "
                            "cache (cut_float_auroc), which equals the unsplit model up to fp16 rounding at the cut.",
    "head_mflops": "splitter.cost convention, the model to the cut plus the encoder (or the channel selection); "
                   "head_ms: that head with its quantizer as ONNX, onnxruntime batch 1 median; *_plain_cut: without.",
}


def cached_rows() -> list[dict]:
    """Every row measured so far (.cache/bottleneck/rows), whatever the sources' revision: each row says
    under measured_at the commit that measured it."""
    rows = [json.loads(p.read_text()) for p in sorted((CACHE / "rows").glob("*.json"))]
    return sorted(rows, key=lambda r: (r["method"], -r["bytes_per_frame"]))


def merge(result: dict, path: Path) -> None:
    """Replace ped2.json's bottleneck/prune rows (same schema) with these; keeps every other row."""
    doc = json.loads(path.read_text())
    keep = [r for r in doc["rows"] if r["method"] not in ("bottleneck", "prune")]
    doc["rows"] = keep + result["rows"]
    from bench import ped2

    for fam in ("bottleneck", "prune"):
        if fam not in ped2.FAMILIES:
            ped2.FAMILIES = (*ped2.FAMILIES, fam)
    doc["summary"] = {"auroc": ped2.summarize(doc["rows"], "auroc"),
                      "auroc_smoothed": ped2.summarize(doc["rows"], "auroc_smoothed")}
    doc.setdefault("extra_runs", {})["bottleneck_prune"] = {
        k: v for k, v in result.items() if k != "rows"}
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


def markdown(rows: list[dict]) -> str:
    """The README's table of the bottleneck and prune rows."""
    lines = ["| method | setting | codes | entropy B/frame | zstd B/frame | AUROC [95% CI] | drop | smoothed | "
             "head MFLOPs (÷ full) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["bytes_per_frame"])):
        lines.append(
            f"| {r['method']} | {r['setting']} | {'×'.join(map(str, r['code_shape']))} | {r['bytes_per_frame']:,.0f} | "
            f"{r['zstd_bytes_per_frame']:,.0f} | {r['auroc']:.3f} [{r['auroc_lo']:.3f}, {r['auroc_hi']:.3f}] | "
            f"{100 * r['auroc_drop']:+.1f} pt | {r['auroc_smoothed']:.3f} | {r['head_mflops']:,.0f} "
            f"({r['head_fraction_of_full_model']:.3f}) |")
    return "\n".join(lines) + "\n"
