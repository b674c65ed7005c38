"""Measure every candidate cut of a model on UCSD Ped2: what it costs, what it sends, what it keeps.

`analyze(sp)` returns a JSON-ready dict with, per cut, the head's cost (FLOPs, parameters, peak
activation memory; head.onnx and tail.onnx timed with onnxruntime) and, per cut and bit depth,

- the rate: the factorized entropy of the codes (the ideal bytes per frame of a per-channel coder)
  and the bytes every registered coder actually produces (codec.encode_frame, framing included);
- the information kept: a cross-fitted lower bound on I(T;Y), Y the frame's Ped2 label, from a
  logistic probe on per-channel summaries of T (the spatial mean and max of the dequantized cut
  tensors and of their absolute change over `gap` frames, the scorer's motion view); the same at
  the float activations of each cut is the reference a quantizer can only lose from;
- the fidelity: the frame AUROC of the split detector (codes -> dequantizer -> tail -> scorer, each
  frame against frame t-gap, every test video its own camera) and its paired drop against the
  unsplit detector on the same frames, with a bootstrap interval.

For the classify task (no scorer) Y is the unsplit model's top-1 class and the fidelity is top-1
agreement and mean KL(unsplit || split) on the same frames.

The fidelity passes (the tail and scorer per cut and bit depth) dominate the cost, so every
result is cached on disk per (cut, bits) under the digest of the weights, the sources that compute
it, the configuration and the frames: a rerun only computes what changed. `splitter.selection.select` turns
the result into a choice for a link and a device; `splitter.report` writes it up.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import codec
from codec.coders import standalone as coder_names
from splitter.cache import REPO, Cache, digest_files, digest_frames, digest_state
from splitter.cuts import Cut, find_cut
from splitter.metrics import Bootstrap, auroc

SCHEMA = "infocut.analysis/1"
BITS = (8, 6, 4, 3, 2)
BATCH = 16  # frames per torch call of the head and tail
SCORE_BATCH = 4  # the scorer's distance matrix is (N, H*W, bank): 4 frames keep it under ~100 MB
DECODE_SAMPLES = 8  # coded frames per (cut, bits, coder) decoded to time the decoder
TIMING_RUNS = 20
DRAWS = 1000
FOLDS = 5
# The probe's L2 strength. Per-channel summaries give 64-256 features for ~240 frames and GroupKFold
# holds out whole videos; C=1 overfits (bounds of -0.2 to -0.5 bits in a pilot on 4 ResNet-20 cuts at
# 120x180), C=0.01 was the best of 1, 0.1, 0.01, 0.001 there and as good as choosing C per fold by inner
# CV (5x slower). Any fixed C gives a valid bound; choosing it on a pilot of the same frames flatters it a little.
PROBE_C = 0.01
DETECTOR_BINS = 8  # quantile bins of the frame score for the detector's information bound

# Every file whose code computes a cached value: editing one invalidates what it computed. The cache holds
# measurements only (codes' histograms, coded sizes, scores, probe features, timings); the estimates made from
# them (entropy, information bounds, AUROC and intervals: splitter/flow.py, splitter/metrics.py) are recomputed
# on every run, so improving an estimator costs seconds, not a new pass over the video.
SOURCES = (
    "splitter/analyze.py", "splitter/export.py", "splitter/cuts.py", "splitter/graphs.py", "splitter/scorer.py",
    "splitter/features.py", "splitter/loader.py",
    "codec/quantizer.py", "codec/framing.py", "codec/coders/raw.py", "codec/coders/zstd.py",
    "edge/preprocess.py", "edge/source.py", "infocut/ped2.py",
)


# ------------------------------------------------------------------------------------------ frames


class EvalSet:
    """The test frames the analysis scores: every `stride`-th frame of each Ped2 test video, plus the
    frame `gap` back of each (the scorer's and the probe's motion view needs it), each video a camera."""

    def __init__(self, size: tuple[int, int], stride: int, gap: int, motion: bool):
        from infocut import ped2

        if stride < 1:
            raise ValueError(f"eval_stride must be at least 1, got {stride}")
        self.size, self.stride, self.gap, self.motion = size, stride, gap, motion
        self.videos = ped2.videos("testing")
        labels = ped2.labels()
        self.scored, self.needed, self.labels, self.pos, self.prev = {}, {}, {}, {}, {}
        for vid, paths in self.videos.items():
            if len(labels[vid]) != len(paths):
                raise ValueError(f"test video {vid}: {len(paths)} frames, labels.json says {len(labels[vid])}")
            scored = np.arange(0, len(paths), stride)
            prev = scored - gap
            needed = np.union1d(scored, prev[prev >= 0]) if motion else scored
            self.scored[vid], self.needed[vid] = scored, needed
            self.labels[vid] = labels[vid][scored]
            self.pos[vid] = np.searchsorted(needed, scored)  # where each scored frame sits in `needed`
            self.prev[vid] = np.where(prev >= 0, np.searchsorted(needed, np.maximum(prev, 0)), -1)
        self._frames: dict[str, np.ndarray] = {}

    @property
    def y(self) -> np.ndarray:
        return np.concatenate(list(self.labels.values()))

    @property
    def groups(self) -> np.ndarray:
        return np.concatenate([np.full(len(s), i) for i, s in enumerate(self.scored.values())])

    def digest(self) -> str:
        paths = [self.videos[v][i] for v, idx in self.needed.items() for i in idx]
        return f"{digest_frames(paths)}-s{self.stride}-g{self.gap}-{self.motion}"

    def frames(self, vid: str) -> np.ndarray:
        """(len(needed), H, W, 3) uint8 frames of one video, read and resized as the edge does."""
        if vid not in self._frames:
            from splitter.features import load_frames

            self._frames[vid] = load_frames([self.videos[vid][i] for i in self.needed[vid]], self.size)
        return self._frames[vid]

    def native_bytes(self) -> int:
        """Bytes of one raw RGB frame at the camera's native size: what sending the frame itself costs."""
        from infocut.ped2 import read_rgb

        first = next(iter(self.videos.values()))[0]
        return int(read_rgb(first).size)

    @property
    def n(self) -> int:
        return sum(len(s) for s in self.scored.values())

    @property
    def n_needed(self) -> int:
        return sum(len(s) for s in self.needed.values())


# ------------------------------------------------------------------------------------------ helpers


def _probe_features(xs: Sequence[np.ndarray], pos: np.ndarray, prev: np.ndarray, motion: bool) -> np.ndarray:
    """Per channel of each cut tensor: the spatial mean and max at the scored frames, and (motion) of the
    absolute change from the frame `gap` back (zero where there is none, as the scorer has no motion there)."""
    out = []
    for x in xs:
        x = x.reshape(len(x), x.shape[1], -1)
        cur = x[pos]
        out += [cur.mean(-1), cur.max(-1)]
        if motion:
            has = (prev >= 0)[:, None, None]
            d = np.abs(cur - x[np.maximum(prev, 0)]) * has
            out += [d.mean(-1), d.max(-1)]
    return np.concatenate(out, axis=1).astype(np.float64)


def _channel_counts(codes: np.ndarray, bits: int) -> np.ndarray:
    """(C, 2**bits) histogram of each channel's codes, (N, C, ...) uint8."""
    n, c = codes.shape[:2]
    levels = 1 << bits
    flat = codes.reshape(n, c, -1).transpose(1, 0, 2).reshape(c, -1).astype(np.int64)
    flat += (np.arange(c, dtype=np.int64) * levels)[:, None]
    return np.bincount(flat.ravel(), minlength=c * levels).reshape(c, levels)


def _code_features(codes: Sequence[np.ndarray], qs: Sequence[codec.QuantParams], pos: np.ndarray, prev: np.ndarray,
                   motion: bool) -> np.ndarray:
    """_probe_features of the dequantized codes, computed on the integer codes: dequantizing is affine per channel
    with a positive scale, so mean and max commute with it, and |change| is scale x |code change|. That avoids a
    float copy of every code (gigabytes at the shallow cuts of a 480x720 model)."""
    out = []
    for x, q in zip(codes, qs, strict=True):
        c = x.shape[1]
        scale = np.broadcast_to(np.asarray(q.scale, np.float64).reshape(-1), (c,))
        zp = np.broadcast_to(np.asarray(q.zero_point, np.float64).reshape(-1), (c,))
        x = x.reshape(len(x), c, -1)
        cur = x[pos]
        out += [(cur.mean(-1) - zp) * scale, (cur.max(-1) - zp) * scale]
        if motion:
            has = (prev >= 0)[:, None]
            d = np.abs(cur.astype(np.int16) - x[np.maximum(prev, 0)].astype(np.int16))
            out += [d.mean(-1) * scale * has, d.max(-1) * scale * has]
    return np.concatenate(out, axis=1).astype(np.float64)


def _probe(features: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float = PROBE_C) -> dict:
    """flow.probe_information, grouped by test video (a video's frames never score a probe they trained)."""
    from splitter.flow import probe_information

    folds = min(FOLDS, len(np.unique(groups)))
    info = probe_information(features, y, groups=groups, folds=folds, C=C)
    d = asdict(info)
    d["fold_estimates"] = list(d["fold_estimates"])
    return d


def _detector_probe(scores: np.ndarray, y: np.ndarray) -> dict:
    """The I(T;Y) bound read through the detector. The frame score is a function of T (tail, then scorer), so
    I(T;Y) >= I(score;Y) >= H(Y) - the cross-fitted cross-entropy of any probe q(y|score) (data processing).
    The probe is a table over DETECTOR_BINS quantile bins of the score with add-1/2 smoothing: it assumes no
    shape of p(y|score) (a logistic on the score was far looser here: the relation is not monotone-logistic
    across videos). The bins come from the scores alone (no labels) and the table has DETECTOR_BINS cells for
    hundreds of frames, so plain 5-fold cross-fitting suffices (nothing to memorize a video with)."""
    from splitter.flow import probe_information

    s = np.asarray(scores, np.float64)
    edges = np.unique(np.quantile(s, np.linspace(0, 1, DETECTOR_BINS + 1)[1:-1]))
    info = probe_information(np.digitize(s, edges)[:, None], y, folds=FOLDS, probe="table")
    d = asdict(info)
    d["fold_estimates"] = list(d["fold_estimates"])
    return d


def _scores(scorer, feats, pos: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Frame scores of the scored frames, each against the features `gap` frames back (none: no motion)."""
    import torch

    f = torch.from_numpy(feats)
    out = []
    for i in range(0, len(pos), SCORE_BATCH):
        p, q = pos[i : i + SCORE_BATCH], prev[i : i + SCORE_BATCH]
        has = torch.from_numpy((q >= 0).astype(np.float32))
        out.append(scorer.frame_scores(f[p], f[np.maximum(q, 0)], has).numpy())
    return np.concatenate(out)


def _batched(fn, *arrays: np.ndarray) -> list[np.ndarray]:
    """fn over the rows of arrays (the same N) in batches, as float32 numpy: a tuple output gives a list."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(arrays[0]), BATCH):
            r = fn(*(torch.from_numpy(np.ascontiguousarray(a[i : i + BATCH])) for a in arrays))
            outs.append([t.numpy() for t in (r if isinstance(r, tuple) else (r,))])
    return [np.concatenate(o) for o in zip(*outs)]


def _ort_batched(sess, feeds: dict[str, np.ndarray], fixed: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """An onnxruntime session over the rows of `feeds` in batches (`fixed` inputs go whole to every call)."""
    n = len(next(iter(feeds.values())))
    outs = []
    for i in range(0, n, BATCH):
        batch = {k: np.ascontiguousarray(v[i : i + BATCH]) for k, v in feeds.items()}
        outs.append(sess.run(None, {**batch, **(fixed or {})}))
    return [np.concatenate(o) for o in zip(*outs)]


def _session(path: Path):
    """An onnxruntime CPU session whose threads sleep between runs: by default they spin for a while after
    each run, which here steals the cores from the torch scorer that runs in between."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Graphs:
    """The float head (image -> float cut tensors) and the tail with the quantizer's parameters as inputs
    (codes, scales, zero points -> the scorer's features, or logits), exported once per cut and run by
    onnxruntime (2-3x faster than torch eager here) for every bit depth: Dequantize's ops, parameters fed."""

    def __init__(self, sp, cut: Cut, tmp: Path):
        import torch
        from torch import nn

        from splitter.cuts import split
        from splitter.export import _onnx

        head, tail = split(sp.model, cut, upto=sp.upto)
        n = len(cut.tensors)
        self.ranks = [len(t.shape) + 1 for t in cut.tensors]
        self.names = [f"codes_{i}" for i in range(n)]
        self.params = [f"{k}_{i}" for k in ("scale", "zero_point") for i in range(n)]

        class DequantTail(nn.Module):
            def __init__(self):
                super().__init__()
                self.tail = tail

            def forward(self, *inputs):
                codes, scales, zps = inputs[:n], inputs[n : 2 * n], inputs[2 * n :]
                return self.tail(*((c.float() - z) * s for c, s, z in zip(codes, scales, zps)))

        h, w = sp.size
        image = torch.zeros(1, h, w, 3, dtype=torch.uint8)
        outs = [f"x_{i}" for i in range(n)]
        _onnx(nn.Sequential(sp.preprocess, head).eval(), (image,), tmp / "head.onnx", ["image"], outs)
        codes = tuple(torch.zeros(1, *t.shape, dtype=torch.uint8) for t in cut.tensors)
        shapes = [(1, t.shape[0], *[1] * (len(t.shape) - 1)) for t in cut.tensors]
        params = tuple(torch.ones(s) for s in shapes) + tuple(torch.zeros(s) for s in shapes)
        _onnx(DequantTail().eval(), codes + params, tmp / "tail.onnx", self.names + self.params, ["out"])
        self.head, self.tail = _session(tmp / "head.onnx"), _session(tmp / "tail.onnx")
        self.shapes = shapes

    def float_head(self, frames: np.ndarray) -> list[np.ndarray]:
        return _ort_batched(self.head, {"image": frames})

    def run_tail(self, codes: list[np.ndarray], qs: list[codec.QuantParams]) -> np.ndarray:
        def view(v, shape):
            return np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (shape[1],))
                                        .reshape(shape))

        fixed = {f"scale_{i}": view(q.scale, s) for i, (q, s) in enumerate(zip(qs, self.shapes, strict=True))}
        fixed |= {f"zero_point_{i}": view(q.zero_point, s) for i, (q, s) in enumerate(zip(qs, self.shapes, strict=True))}
        return _ort_batched(self.tail, dict(zip(self.names, codes, strict=True)), fixed)[0]


def _entropy_bits(y: np.ndarray) -> float:
    p = np.bincount(np.asarray(y, int)) / len(y)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def machine() -> dict:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")), cpu,
        )
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cpus": os.cpu_count(), "machine": platform.machine(), "onnxruntime": ort.__version__}


# ----------------------------------------------------------------------------------------- analysis


class _Analysis:
    """The state of one analyze() call: the splitter, the frames, the cache and its keys."""

    def __init__(self, sp, bits, coders, cuts, eval_stride, cache_dir, progress):
        cfg = sp.cfg
        self.sp, self.cfg = sp, cfg
        self.bits = tuple(sorted({codec.quantizer.check_bits(b) for b in bits}, reverse=True))
        self.coders = list(coders or coder_names())
        for c in self.coders:
            codec.get_coder(c)
        self.cuts = [c if isinstance(c, Cut) else find_cut(sp.cuts, c) for c in (cuts or sp.cuts)]
        self.cuts.sort(key=lambda c: c.index)
        self.anomaly = cfg.task == "anomaly"
        self.ev = EvalSet(sp.size, eval_stride, cfg.gap, motion=self.anomaly)
        self.cache = Cache(cache_dir)
        self.progress = progress
        self.timing_bits = 8 if 8 in self.bits else self.bits[0]
        self.stats = {"cached": 0, "computed": 0}
        # What every cached value depends on: weights, code, configuration, the frames it reads.
        fit = [p for v in sp.training_videos(False).values() for p in v]
        held = [p for v in sp.training_videos(True).values() for p in v]
        calib = [p for v in sp.calibration_videos().values() for p in v]
        conf = {k: v for k, v in asdict(cfg).items() if k not in ("cut", "bits", "coder")}
        self.base = {
            "schema": SCHEMA, "weights": digest_state(sp.model), "sources": digest_files(SOURCES, REPO),
            "config": conf, "size": list(sp.size), "feature_layer": sp.feature_layer, "upto": sp.upto,
            "fit_frames": digest_frames(fit), "heldout_frames": digest_frames(held),
            "calibration_frames": digest_frames(calib), "eval_frames": self.ev.digest(),
        }

    # -- cache ---------------------------------------------------------------------------------------
    def _key(self, kind: str, **extra) -> tuple[str, dict]:
        deps = dict(self.base, kind=kind, **extra)
        return Cache.key(**deps), deps

    def _cut_id(self, cut: Cut) -> dict:
        return {"name": cut.name, "index": cut.index, "tensors": [[t.name, list(t.shape)] for t in cut.tensors]}

    def _load(self, name: str, kind: str, ext: str = "json", **extra):
        key, _ = self._key(kind, **extra)
        got = self.cache.load(name, key, ext)
        self.stats["cached" if got is not None else "computed"] += 1
        return got

    def _save(self, name: str, kind: str, value, ext: str = "json", **extra) -> None:
        key, deps = self._key(kind, **extra)
        self.cache.save(name, key, ext, value, deps)

    # -- the scorer and the unsplit reference -----------------------------------------------------------
    def scorer(self):
        """The splitter's scorer, its fit cached (at 480x720 the fit is minutes of head passes)."""
        from splitter.scorer import MotionKnnScorer

        if self.sp._scorer is None:
            got = self._load("scorer", "scorer", "npz")
            if got is not None:
                self.sp._scorer = MotionKnnScorer.from_state(got, self.cfg.topk)
            else:
                sc = self.sp.scorer()
                self._save("scorer", "scorer", {k: v.numpy() for k, v in sc.state_dict().items()}, "npz")
        return self.sp._scorer

    def reference(self) -> dict:
        """Unsplit scores (anomaly) or logits (classify) of the scored frames, cached."""
        got = self._load("reference", "reference", "npz")
        if got is not None:
            return got
        sp, ev = self.sp, self.ev
        if self.anomaly:
            net = sp.features_until(sp.feature_layer)
            scorer = self.scorer()
            out = []
            for vid in ev.videos:
                (feats,) = _batched(net, ev.frames(vid))
                out.append(_scores(scorer, feats, ev.pos[vid], ev.prev[vid]))
            value = {"scores": np.concatenate(out)}
        else:
            net = _whole(sp)
            value = {"logits": np.concatenate([_batched(net, ev.frames(v))[0] for v in ev.videos])}
        self._save("reference", "reference", value, "npz")
        return value

    # -- one cut ------------------------------------------------------------------------------------------
    def cut(self, cut: Cut, ref: dict, bar, task) -> tuple[np.ndarray | None, dict, dict[int, dict]]:
        """The cut's measurements: (float probe features, timing, {bits: record with its probe features})."""
        cid = self._cut_id(cut)

        def load(b):
            rec = self._load(f"bits-{cut.name}-{b}", "bits", coders=self.coders, cut=cid, bits=b)
            feats = self._load(f"probe-{cut.name}-{b}", "probe", "npz", cut=cid, bits=b)
            return None if rec is None or feats is None else dict(rec, probe_features=feats["x"])

        records = {b: load(b) for b in self.bits}
        got = self._load(f"float-{cut.name}", "float", "npz", cut=cid)
        float_feats = None if got is None else got["x"]
        timing = self._load(f"timing-{cut.name}", "timing", cut=cid, bits=self.timing_bits, machine=machine())
        todo = [b for b, r in records.items() if r is None]
        qs: dict[int, list[codec.QuantParams]] = {}
        need_q = list(todo)
        if timing is None and records.get(self.timing_bits) is None and self.timing_bits not in need_q:
            need_q.append(self.timing_bits)
        if need_q:
            bar.update(task, description=f"{cut.name}: calibrate")
            qs = self.sp.calibrate_bits(cut, need_q)
        if todo or float_feats is None:
            bar.update(task, description=f"{cut.name}: eval")
            new, new_float = self._measure(cut, todo, qs, ref, float_feats is None, bar)
            for b in todo:
                rec = new[b]
                feats = rec.pop("probe_features")
                self._save(f"bits-{cut.name}-{b}", "bits", rec, coders=self.coders, cut=cid, bits=b)
                self._save(f"probe-{cut.name}-{b}", "probe", {"x": feats}, "npz", cut=cid, bits=b)
                records[b] = dict(rec, probe_features=feats)
            if float_feats is None:
                float_feats = new_float
                self._save(f"float-{cut.name}", "float", {"x": float_feats}, "npz", cut=cid)
        if timing is None:
            bar.update(task, description=f"{cut.name}: time onnx")
            q = qs.get(self.timing_bits) or [codec.QuantParams.from_json(d) for d in
                                               records[self.timing_bits]["qparams"]]
            timing = self._time(cut, q)
            self._save(f"timing-{cut.name}", "timing", timing, cut=cid, bits=self.timing_bits, machine=machine())
        return float_feats, timing, records

    def _measure(self, cut: Cut, todo: list[int], qs: dict, ref: dict, want_float: bool, bar) -> tuple[dict, Any]:
        """One pass over the eval frames for a cut: the head once (float activations), then for each bit
        depth the codes, their histograms and coded sizes, the probe's features and the tail and scorer.
        Only measurements: the estimates (entropy, information bounds) are made from them in _assemble."""
        import tempfile

        sp, ev = self.sp, self.ev
        with tempfile.TemporaryDirectory(prefix="infocut-analyze-") as tmp:
            graphs = _Graphs(sp, cut, Path(tmp))
        scorer = self.scorer() if self.anomaly else None
        raw_bytes = ev.native_bytes()
        acc = {b: {"counts": [0] * len(cut.tensors), "sizes": {c: [] for c in self.coders},
                   "enc": {c: [] for c in self.coders}, "samples": {c: [] for c in self.coders},
                   "probe": [], "out": [], "skip": False} for b in todo}
        float_probe = []
        task = bar.add_task(f"  {cut.name}: {len(todo)} bit depths", total=ev.n_needed)
        for vi, vid in enumerate(ev.videos):
            xs = graphs.float_head(ev.frames(vid))
            pos, prev = ev.pos[vid], ev.prev[vid]
            if want_float:
                float_probe.append(_probe_features(xs, pos, prev, self.anomaly))
            for b in todo:
                a = acc[b]
                codes = [codec.quantize(x, q) for x, q in zip(xs, qs[b], strict=True)]
                scored = [c[pos] for c in codes]
                for i, c in enumerate(scored):
                    a["counts"][i] = a["counts"][i] + _channel_counts(c, b)
                for coder in self.coders:
                    for f in range(len(pos)):
                        t0 = time.perf_counter()
                        frame = codec.encode_frame([c[f : f + 1] for c in scored], b, coder)
                        a["enc"][coder].append(time.perf_counter() - t0)
                        a["sizes"][coder].append(len(frame))
                        if len(a["samples"][coder]) < DECODE_SAMPLES:
                            a["samples"][coder].append(frame)
                a["probe"].append(_code_features(codes, qs[b], pos, prev, self.anomaly))
                if vi == 0:  # dominated by the raw frame? decided on the first video, to skip its tails
                    a["skip"] = min(np.mean(s) for s in a["sizes"].values()) > raw_bytes
                if a["skip"]:
                    continue
                if self.anomaly:
                    a["out"].append(_scores(scorer, graphs.run_tail(codes, qs[b]), pos, prev))
                else:
                    a["out"].append(graphs.run_tail(scored, qs[b]))
            bar.advance(task, len(ev.needed[vid]))
        bar.remove_task(task)

        records = {}
        for b in todo:
            a = acc[b]
            coded = {}
            for coder in self.coders:
                sizes = np.asarray(a["sizes"][coder], np.float64)
                dec = [_ms(lambda fr=fr: codec.decode_frame(fr), 3) for fr in a["samples"][coder]]
                coded[coder] = {"mean_bytes": float(sizes.mean()), "p95_bytes": float(np.percentile(sizes, 95)),
                                "encode_ms": 1e3 * float(np.median(a["enc"][coder])),
                                "decode_ms": float(np.median(dec))}
            best = min(c["mean_bytes"] for c in coded.values())
            rec = {
                "cut": cut.name, "bits": b, "qparams": [q.to_json() for q in qs[b]],
                "counts": [c.tolist() for c in a["counts"]], "frames": ev.n,
                "raw_packed_bytes": sum(math.ceil(t.elements * b / 8) for t in cut.tensors),
                "coded": coded,
                "dominated": bool(best > raw_bytes),
                "fidelity_skipped": bool(a["skip"]),
                "probe_features": np.concatenate(a["probe"]),
            }
            if self.anomaly:
                rec["scores"] = None if a["skip"] else np.concatenate(a["out"]).astype(float).tolist()
            elif not a["skip"]:
                rec.update(_classify_fidelity(ref["logits"], np.concatenate(a["out"])))
            records[b] = rec
        return records, (np.concatenate(float_probe) if want_float else None)

    def _estimates(self, cut: Cut, rec: dict, y: np.ndarray) -> dict:
        """The rate and information estimates of one (cut, bits) from its measurements."""
        from splitter.flow import rate_from_counts

        groups = self.ev.groups
        spatial = [math.prod(t.shape[1:]) for t in cut.tensors]
        rate = rate_from_counts([np.asarray(c) for c in rec["counts"]], spatial, rec["frames"])
        linear = _probe(rec["probe_features"], y, groups)
        # Through the detector where its scores exist (the scorer is nonlinear and fitted on normal video, so
        # it reads far more of T than a linear probe on summaries), else the linear probe.
        detector = self.anomaly and rec.get("scores") is not None
        return {"ideal_bytes": rate.bytes_per_frame, "bits_per_element": rate.bits_per_element,
                "info_linear": linear, "info": _detector_probe(np.asarray(rec["scores"]), y) if detector else linear,
                "info_kind": "detector" if detector else "linear"}

    def _labels(self, ref: dict) -> np.ndarray:
        """Y of the probe: the Ped2 frame label, or for classify the unsplit model's top-1 class."""
        return self.ev.y.astype(int) if self.anomaly else ref["logits"].argmax(1)

    def _time(self, cut: Cut, qs: list[codec.QuantParams]) -> dict:
        """head.onnx and tail.onnx of the cut (as the artifact holds them) timed by onnxruntime at batch 1."""
        import tempfile

        from splitter.cost import time_onnx

        vid = next(iter(self.ev.videos))
        if self.anomaly:
            self.scorer()  # the tail holds the scorer: the cached fit, not a new one
        with tempfile.TemporaryDirectory(prefix="infocut-analyze-") as tmp:
            _, _, feeds = self.sp.write_graphs(cut, qs, Path(tmp), image=self.ev.frames(vid)[0])
            head_ms = time_onnx(Path(tmp) / "head.onnx", feeds["head"], runs=TIMING_RUNS)
            tail_ms = time_onnx(Path(tmp) / "tail.onnx", feeds["tail"], runs=TIMING_RUNS)
        return {"head_ms": head_ms, "tail_ms": tail_ms, "bits": qs[0].bits}

    # -- everything ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from contextlib import nullcontext

        from splitter.cost import head_costs
        from splitter.features import progress_bar

        t0 = time.perf_counter()
        sp = self.sp
        costs = {c.name: c for c in head_costs(sp.model, sp.size, self.cuts, upto=sp.upto)}
        quiet = sp.quiet
        bar_ctx = progress_bar() if self.progress else nullcontext(_NoBar())
        with bar_ctx as bar:
            sp.bar, sp.quiet = (bar, quiet) if self.progress else (None, True)
            try:
                task = bar.add_task("reference (unsplit)", total=len(self.cuts))
                ref = self.reference()
                per_cut = []
                for cut in self.cuts:
                    bar.update(task, description=cut.name)
                    per_cut.append((cut, *self.cut(cut, ref, bar, task)))
                    bar.advance(task)
            finally:
                sp.bar, sp.quiet = None, quiet
        return self._assemble(costs, ref, per_cut, time.perf_counter() - t0)

    def _assemble(self, costs, ref, per_cut, wall_s: float) -> dict:
        sp, ev, cfg = self.sp, self.ev, self.cfg
        y = ev.y
        out_cuts, rows = [], []
        if self.anomaly:
            boot = Bootstrap(y, draws=DRAWS)
            ref_samples = boot.samples(ref["scores"])
            ref_auroc = auroc(y, ref["scores"])
            lo, hi = boot.interval(ref_samples)
            reference = {"auroc": ref_auroc, "auroc_lo": lo, "auroc_hi": hi,
                         "info": _detector_probe(ref["scores"], y), "h_y": _entropy_bits(y)}
        else:
            top = ref["logits"].argmax(1)
            reference = {"top1_classes": int(len(np.unique(top))), "top1_most_common_share": float(
                np.bincount(top).max() / len(top))}
        labels = self._labels(ref)
        for cut, float_feats, timing, measured_records in per_cut:
            hc = costs[cut.name]
            float_info = _probe(float_feats, labels, ev.groups)
            records = {b: dict(r, **self._estimates(cut, r, labels)) for b, r in measured_records.items()}
            kind = "stage" if cut.stage else ("multi" if len(cut.tensors) > 1 else "inner")
            cost = {"flops": hc.flops, "tail_flops": hc.tail_flops, "params": hc.params,
                    "param_bytes": hc.param_bytes, "peak_bytes": hc.peak_bytes,
                    "head_ms": timing["head_ms"], "tail_ms": timing["tail_ms"], "timing_bits": timing["bits"]}
            out_cuts.append({
                "name": cut.name, "index": cut.index, "stage": cut.stage, "kind": kind,
                "tensors": [{"node": t.name, "shape": list(t.shape)} for t in cut.tensors],
                "elements": cut.elements, "float_bytes": cut.raw_bytes, "cost": cost, "float_info": float_info,
            })
            for b in self.bits:
                r = records[b]
                row = {
                    "cut": cut.name, "index": cut.index, "kind": kind, "bits": b, "elements": cut.elements,
                    "ideal_bytes": r["ideal_bytes"], "bits_per_element": r["bits_per_element"],
                    "raw_packed_bytes": r["raw_packed_bytes"], "coded": r["coded"], "info": r["info"],
                    "info_kind": r["info_kind"], "info_linear": r["info_linear"],
                    "dominated": r["dominated"], "head_ms": timing["head_ms"], "tail_ms": timing["tail_ms"],
                    "auroc": None, "auroc_lo": None, "auroc_hi": None, "drop": None, "drop_lo": None,
                    "drop_hi": None, "qparams": r["qparams"],
                }
                measured = not r["dominated"] and not r["fidelity_skipped"]
                if self.anomaly and measured:
                    s = np.asarray(r["scores"])
                    samples = boot.samples(s)
                    row["auroc"] = auroc(y, s)
                    row["auroc_lo"], row["auroc_hi"] = boot.interval(samples)
                    row["drop"] = ref_auroc - row["auroc"]
                    row["drop_lo"], row["drop_hi"] = boot.interval(ref_samples - samples)
                elif not self.anomaly and measured:
                    row["top1_agreement"], row["mean_kl"] = r["top1_agreement"], r["mean_kl"]
                    row["drop"] = 1.0 - r["top1_agreement"]
                if r["fidelity_skipped"] and not r["dominated"]:
                    row["note"] = ("fidelity not measured: the first test video's frames cost more than the raw "
                                   "frame, all of them do not (borderline)")
                rows.append(row)
        counts = {"total": len(sp.cuts), "stage": sum(c.stage for c in sp.cuts),
                  "inner": sum(not c.stage and len(c.tensors) == 1 for c in sp.cuts),
                  "multi": sum(len(c.tensors) > 1 for c in sp.cuts)}
        return {
            "schema": SCHEMA,
            "model": cfg.model, "task": cfg.task, "input_size": list(sp.size), "feature_layer": sp.feature_layer,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("cut", "bits", "coder")},
            "bits": list(self.bits), "coders": self.coders,
            "raw_frame_bytes": ev.native_bytes(),
            "eval": {"stride": ev.stride, "gap": cfg.gap, "frames": ev.n, "computed_frames": ev.n_needed,
                     "anomalous": int(ev.y.sum()), "videos": {v: len(s) for v, s in ev.scored.items()},
                     "bootstrap_draws": DRAWS, "probe_folds": min(FOLDS, len(ev.videos))},
            "cuts_found": counts,
            "reference": reference,
            "cuts": out_cuts,
            "rows": rows,
            "machine": machine(),
            "how": how(self.anomaly, self.timing_bits),
            "run": {"wall_s": wall_s, **self.stats},
        }


def _whole(sp):
    from torch import nn

    return nn.Sequential(sp.preprocess, sp.model).eval()


def _classify_fidelity(ref_logits: np.ndarray, logits: np.ndarray) -> dict:
    lp, lq = _log_softmax(ref_logits), _log_softmax(logits)
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    return {"top1_agreement": float((ref_logits.argmax(1) == logits.argmax(1)).mean()),
            "mean_kl": float(kl.mean())}


class _NoBar:
    """A progress display that shows nothing (progress=False)."""

    def add_task(self, *a, **k) -> int:
        return 0

    def update(self, *a, **k) -> None:
        pass

    def advance(self, *a, **k) -> None:
        pass

    def remove_task(self, *a, **k) -> None:
        pass


def how(anomaly: bool, timing_bits: int) -> dict:
    """How each figure is measured, in words (the report quotes these)."""
    y = ("the Ped2 frame label (anomalous or not)" if anomaly else
         "the unsplit model's top-1 class on the same frame (no labels: the probe asks how much of the model's "
         "own decision the cut still carries)")
    d = {
        "eval_frames": "every eval_stride-th frame of each Ped2 test video (each video its own camera), plus the "
                       "frame `gap` back of each for the motion view; frames read and resized as the edge does",
        "ideal_bytes": "flow.factorized_entropy of the codes of the scored frames (per-channel histograms over all "
                       "frames and positions, Miller-Madow corrected) times elements / 8: the size a coder with one "
                       "frequency table per channel approaches; framing excluded",
        "coded": "codec.encode_frame of each scored frame with each coder (framing and CRC included): mean and "
                 "95th percentile; encode_ms the median time of that call here, decode_ms the median of "
                 f"codec.decode_frame on {DECODE_SAMPLES} frames here",
        "raw_packed_bytes": "elements x bits / 8: the codes bit-packed, no framing",
        "info_linear": f"lower bound on I(T;Y) in bits, Y = {y}: flow.probe_information (logistic probe, "
                       f"C={PROBE_C}, GroupKFold by test video, up to {FOLDS} folds) on per-channel spatial mean and "
                       "max of the dequantized cut tensors" + (" and of their absolute change from the frame gap back"
                                                               if anomaly else "")
                       + "; float_info is the same on the float activations of each cut",
        "info": ("lower bound on I(T;Y) in bits read through the detector: H(Y) minus the 5-fold cross-fitted "
                 f"cross-entropy of a table probe (add-1/2) on {DETECTOR_BINS} quantile bins of the split detector's "
                 "frame score, a function of T, so the bound holds for T by data processing; where the fidelity was "
                 "not measured (dominated settings), info_linear" if anomaly else "info_linear (the linear probe)"),
        "cost": "flops, params, peak activation memory: cost.head_costs (see splitter/cost.py); head_ms and "
                f"tail_ms: cost.time_onnx (median of {TIMING_RUNS} batch-1 runs, onnxruntime CPU, default threads) "
                f"of the cut's head.onnx (preprocessing, head, quantizer) and tail.onnx (dequantizer, tail"
                + (", scorer" if anomaly else "") + f") exported at {timing_bits} bits only: the quantizer is a "
                "handful of elementwise ops whose cost does not depend on the bit depth",
        "dominated": "a (cut, bits) whose best coder's mean frame exceeds the raw RGB frame at the camera's native "
                     "size is dominated by sending the frame itself: its fidelity is not measured (decided on the "
                     "first test video, to skip its tail passes)",
    }
    if anomaly:
        d["fidelity"] = ("frame AUROC of the split detector (codes -> dequantizer -> tail in onnxruntime -> the scorer "
                         "fitted on the float model's features of normal training videos), each scored frame against "
                         "frame t-gap through the same split path, pooled over the test videos; drop = unsplit AUROC "
                         "(float model, same scorer, same frames) - split AUROC, interval: paired "
                         f"{DRAWS}-draw percentile bootstrap over frames")
    else:
        d["fidelity"] = ("top-1 agreement with the unsplit model and mean KL(unsplit || split) over the scored frames; "
                         "drop = 1 - agreement")
    return d


def analyze(
    sp, bits: Sequence[int] = BITS, coders: Sequence[str] | None = None, cuts: Sequence[Cut | str] | None = None,
    eval_stride: int = 4, cache_dir: str | Path | None = None, progress: bool = True,
) -> dict:
    """Measure cost, rate, information and fidelity of `sp` (a splitter.export.Splitter) at every cut in
    `cuts` (default: all of sp.cuts, inner and multi-tensor ones included) and bit depth in `bits`, with
    every coder in `coders` (default: every coder that needs no fitted tables). Results are cached per (cut, bits) under
    `cache_dir` (None: nothing cached). Returns a JSON-ready dict (see the module docstring; its "how"
    says how each figure is measured, its "run" how long this call took and what came from the cache)."""
    return _Analysis(sp, bits, coders, cuts, eval_stride, cache_dir, progress).run()
