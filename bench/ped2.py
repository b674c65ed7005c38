"""Rate against UCSD Ped2 frame AUROC: the MobileNetV2 split against what a camera streams today.

One detector throughout, the demo artifact's: MobileNetV2 (ImageNet weights imported from the
bundled TFLite, `make weights`) up to block5 on frames upscaled 2x to 480x720, then the k-NN
motion scorer (gap 2, topk 50, bank 1024), fitted ONCE on the normal training videos (less the 4
held out for thresholds), as `infocut split mobilenet_v2 --gap 2 --topk 50` fits it. Every method
feeds its frames or codes to that same model and scorer, on the 6 Ped2 test videos, each video a
camera of its own (motion history restarts with every video):

  unsplit    the raw frames (360x240 RGB, 259,200 B) to the cloud, the float model;
  h264/h265  each test video streamed as a live camera encodes it (bench/rivals.py: PyAV
             libx264/libx265, tune=zerolatency, no B-frames, 2 s GOP, 10 fps) at a ladder of CRF,
             decoded, then the float model;
  jpeg/webp  each frame as one image (OpenCV) at a ladder of qualities, decoded, the float model;
  split      head to the cut (stem .. block5), codes at 8/6/4/3/2 bits, every coder of codec/
             (raw bit packing, zstd, and ANS against tables fitted on held-out normal video as the
             export fits them: every frame a key frame, and the product's stream of delta frames
             with a key frame every 50, over every frame of each video), the rest of the network and
             the scorer in the cloud.

Per row: bytes per frame (mean and p95 of the actual encoded frames, framing included), frame-level
AUROC over the scored test frames pooled, with a 95 % bootstrap interval, the same after a causal
smoothing (the max of the scores of the last 0.5 s: frames t-4..t at 10 fps, nothing from the
future), head ms and tail ms (onnxruntime medians, batch 1). The JSON's "how" says exactly how each
figure is obtained; the summary gives, per method, the smallest bytes per frame measured within
1 AUROC point of unsplit, and the ratios between them.

Budget (under 30 min on 2 cores): the backbone at 480x720 costs ~70 ms a frame and the scorer
~25 ms, so every rival setting and every bit depth of the split costs a pass over the test frames.
By default only every 2nd frame is scored (--stride 2): with the scorer's gap of 2 frames, frame t
is scored against frame t-2, also a scored frame, so this is exactly the live score of those frames
and halves every pass. The video codecs still encode and decode every frame. The training features
of the scorer fit and the quantizer calibration are cached on disk (--cache), keyed by everything
they depend on (weights, sizes, frames, sources, onnxruntime version).

    .venv/bin/python bench/ped2.py              # full run: bench/results/ped2.{json,png}
    .venv/bin/python bench/ped2.py --quick      # smoke run: 2 test videos, coarse grid, writes nothing
    .venv/bin/python bench/ped2.py --stride 1   # score every frame (about twice as long)
    .venv/bin/python bench/ped2.py --methods ans  # only the ANS rows, merged into bench/results/ped2.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

from bench.common import COLORS, RESULTS, Bootstrap, auroc, git_revision, machine_info, plot_style, progress
from infocut.settings import require_shared
from splitter.cache import Cache, digest_files, digest_frames  # the analysis caches the same way

FPS = 10
# Ladders sized to the 30-minute budget (each setting is a pass of the model over the test frames), denser
# where the curves cross the 1-point line (CRF ~28-34, quality ~40-70)
CRFS = (25, 30, 34, 40)
QUALITIES = (10, 40, 70, 95)
BITS = (8, 6, 4, 3, 2)
QUICK_VIDEOS = 2
QUICK_CRFS = (28, 38)
QUICK_QUALITIES = (20, 60)
QUICK_BITS = (8, 4, 2)
SMOOTH_SECONDS = 0.5  # causal max over the scores of frames t-4 .. t at 10 fps
DROP = 0.01  # "within 1 AUROC point of unsplit"
BATCH = 2  # frames per onnxruntime call in the measurement passes (as fast as 4 or 8 here, half the memory)
TIMING_FRAMES = 12  # batch-1 runs per graph for the medians (after 2 warm-up runs)
DECODE_SAMPLES = 6  # encoded frames per (cut, bits, coder) kept to time decoding and re-check the raw size
DEFAULT_CACHE = REPO / ".cache" / "ped2"

# The sources whose code computes a cached value: a change to any of them invalidates the cache.
FEATURE_SOURCES = ("splitter/models/mobilenet_v2.py", "splitter/graphs.py", "splitter/cuts.py",
                   "splitter/loader.py", "edge/preprocess.py", "edge/source.py", "infocut/ped2.py")
CALIB_SOURCES = (*FEATURE_SOURCES, "codec/quantizer.py")


def detector_config():
    from splitter.export import SplitConfig

    return SplitConfig(model="mobilenet_v2", gap=2, topk=50, bank_size=1024)


# -- graphs -----------------------------------------------------------------------------------------


def export_session(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], threads: int):
    """torch.onnx export as splitter.export writes artifacts, then an onnxruntime session as edge/cloud open it."""
    from edge.head import session
    from splitter.export import _onnx

    _onnx(module, args, path, inputs, outputs)
    return session(path, threads)


def make_splitter(cfg):
    """A Splitter whose scorer is fitted on features it is given (cached, computed by onnxruntime)
    and whose calibration is given: the same ScorerFit and codec.calibrate, without torch passes."""
    from splitter.export import Splitter
    from splitter.scorer import ScorerFit

    class BenchSplitter(Splitter):
        def __init__(self, cfg):
            super().__init__(cfg, quiet=True)
            self.fit_features = None  # () -> iterable of (T, C, H, W) float32 features of normal videos
            self.qparams: dict[tuple[str, int], object] = {}

        def scorer(self):
            if self._scorer is None:  # Splitter.scorer, with the features from fit_features
                fit = ScorerFit(gap=self.cfg.gap)
                for feats in self.fit_features():
                    fit.add_video(feats)
                self._scorer = fit.build(self.cfg.bank_size, self.cfg.topk).eval()
            return self._scorer

        def calibrate(self, cut, bits):
            return [self.qparams[cut.name, bits]]  # one per tensor: the bench's cuts carry one

        def threshold(self, head_g, tail_g) -> float:
            return 0.0  # timing artifacts only: their alert threshold is never used

    return BenchSplitter(cfg)


def all_codes_module(sp, pairs):
    """image -> codes of every (cut, bits) in `pairs` (splitter.graphs.Quantize, the head's own last op),
    then the float features at the scorer's layer: one pass of the head for every row of the split."""
    import torch
    from torch import nn

    from splitter.graphs import Quantize

    stages = [m for _, m in sp.model.named_children()][: len(sp.stage_cuts)]  # a stage cut ends each stage

    class AllCodes(nn.Module):
        def __init__(self):
            super().__init__()
            self.preprocess, self.stages = sp.preprocess, nn.ModuleList(stages)
            self.quant = nn.ModuleList(
                nn.ModuleList(Quantize(sp.qparams[c.name, b]) for name, b in pairs if name == c.name) for c in sp.stage_cuts
            )

        def forward(self, image):
            x, outs = self.preprocess(image), []
            for stage, quant in zip(self.stages, self.quant):
                x = stage(x)
                outs += [q(x) for q in quant]
            return (*outs, x)

    order = [(c.name, b) for c in sp.stage_cuts for name, b in pairs if name == c.name]
    return AllCodes().eval(), order, torch.zeros(1, *sp.size, 3, dtype=torch.uint8)


def run_batched(sess, frames: np.ndarray, batch: int = BATCH, name: str = "image") -> np.ndarray:
    return np.concatenate([sess.run(None, {name: frames[i : i + batch]})[0] for i in range(0, len(frames), batch)])


# -- scoring ----------------------------------------------------------------------------------------


class ScoreStream:
    """Scores the scored frames of one camera in order: each against the features `lag` scored frames
    back (= gap frames back in time), without motion for the first ones, as cloud.tail.CameraHistory
    and splitter.scorer.lagged give them. reset() starts a new camera."""

    def __init__(self, scorer, lag: int):
        self.scorer, self.lag = scorer, lag
        self.scores: list[np.ndarray] = []
        self.reset()

    def reset(self) -> None:
        self.hist = None

    def push(self, feats: np.ndarray) -> None:
        import torch

        f = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        full = f if self.hist is None else torch.cat([self.hist, f])
        carried = len(full) - len(f)
        src = torch.arange(len(f)) + carried - self.lag
        has = (src >= 0).float()
        self.scores.append(knn_scores(self.scorer, f, full[src.clamp(min=0)], has))
        self.hist = full[-self.lag :]

    def result(self) -> np.ndarray:
        return np.concatenate(self.scores)


def knn_scores(sc, feats, prev, has) -> np.ndarray:
    """MotionKnnScorer's frame score (MotionKnnScorer.frame_scores: its forward's math in one batched GEMM,
    ~2x faster on CPU; equal up to float rounding, checked on every run: `scorer_check` in the JSON)."""
    return sc.frame_scores(feats, prev, has).numpy()


def causal_max(scores: np.ndarray, k: int) -> np.ndarray:
    """max(scores[t-k+1 .. t]): the smoothing uses no future frame."""
    out = scores.copy()
    for j in range(1, k):
        out[j:] = np.maximum(out[j:], scores[:-j])
    return out


# -- the measurement passes -------------------------------------------------------------------------


def fit_features(sp, sess, cache: Cache, deps: dict, bar):
    """Float features of the fit videos at the scorer's layer, per video, from the cache or onnxruntime."""
    from splitter.features import load_frames

    vids = sp.training_videos(False)
    task = bar.add_task("scorer fit: training features", total=sum(len(v) for v in vids.values()))
    for vid, paths in vids.items():
        d = dict(deps, kind="features", video=f"training/{vid}", frames=digest_frames(paths))
        key = Cache.key(**d)
        feats = cache.load("train-features", key, "npy")
        if feats is None:
            feats = np.concatenate([
                run_batched(sess, load_frames(paths[i : i + BATCH], sp.size)) for i in range(0, len(paths), BATCH)
            ])
            cache.save("train-features", key, "npy", feats, d)
        bar.advance(task, len(paths))
        yield feats
    bar.remove_task(task)


def calibrate_cut(acts: np.ndarray, bits: int, per_channel: bool, percentile: float, chunk: int = 1 << 27):
    """codec.calibrate on (N, C, H, W) activations, a few channels at a time to bound memory.

    Per-channel calibration treats every channel alone, so the parameters are those of one call."""
    import codec

    if not per_channel:
        return codec.calibrate(acts, bits, per_channel=False, percentile=percentile)
    step = max(1, chunk // max(1, acts[:, :1].size))
    parts = [codec.calibrate(acts[:, c : c + step], bits, per_channel=True, percentile=percentile)
             for c in range(0, acts.shape[1], step)]
    return codec.QuantParams(bits=bits, scale=np.concatenate([p.scale for p in parts]),
                             zero_point=np.concatenate([p.zero_point for p in parts]), axis=1)


def calibrate_all(sp, cuts, bits_list, tmp: Path, threads: int, cache: Cache, deps: dict, bar) -> dict:
    """Quantizer params of every (cut, bits): codec.calibrate on the activations of the frames
    Splitter.calibrate uses (every calib_stride-th frame of the fit videos), float model in onnxruntime."""
    import codec
    from splitter.features import load_frames

    cfg = sp.cfg
    vids = {k: v[:: cfg.calib_stride] for k, v in sp.training_videos(False).items()}
    paths = [p for v in vids.values() for p in v]
    out = {}
    task = bar.add_task("quantizer calibration", total=len(cuts))
    for cut in cuts:
        d = dict(deps, kind="calibration", cut=cut.name, bits=list(bits_list), frames=digest_frames(paths),
                 percentile=cfg.percentile, per_channel=cfg.per_channel)
        key = Cache.key(**d)
        got = cache.load(f"calib-{cut.name}", key, "json")
        if got is None:
            net = sp.features_until(cut.name)  # Splitter.calibrate's graph: preprocess + head
            sess = export_session(net, (_zeros_image(sp),), tmp / f"upto_{cut.name}.onnx", ["image"], ["x"], threads)
            bar.update(task, description=f"calibration: {cut.name}")
            acts = np.empty((len(paths), *cut.shape), np.float32)
            for i in range(0, len(paths), BATCH):
                acts[i : i + BATCH] = sess.run(None, {"image": load_frames(paths[i : i + BATCH], sp.size)})[0]
            got = {str(b): calibrate_cut(acts, b, cfg.per_channel, cfg.percentile).to_json() for b in bits_list}
            del acts
            cache.save(f"calib-{cut.name}", key, "json", got, d)
        for b in bits_list:
            out[cut.name, b] = codec.QuantParams.from_json(got[str(b)])
        bar.advance(task)
    bar.remove_task(task)
    return out


def _zeros_image(sp):
    import torch

    return torch.zeros(1, *sp.size, 3, dtype=torch.uint8)


def split_pass(sp, pairs, coders, native, scored, lag, tmp, threads, bar, raw_frame_bytes: int) -> dict:
    """Unsplit and split rows in one pass over the test frames: the head's codes of every (cut, bits)
    and the float features come out of one graph; every (cut, bits) then runs its own tail.

    A (cut, bits) whose frames, with the best coder, take more bytes than the raw frame is dominated:
    sending the raw frame to the unsplit model costs fewer bytes, loses nothing and needs no edge
    compute. Its bytes are measured on every frame like the others', but its tail and scorer (the most
    expensive part of the pass) are not run and its AUROC is not evaluated (None in the rows)."""
    from codec import encode_frame
    from edge.preprocess import to_input

    scorer = sp.scorer()
    module, order, image = all_codes_module(sp, pairs)
    outs = [f"codes_{c}_{b}" for c, b in order] + ["features"]
    heads = export_session(module, (image,), tmp / "all_codes.onnx", ["image"], outs, threads)
    tails = {name: tail_session(sp, name, tmp, threads) for name in dict.fromkeys(c for c, _ in order)}
    streams = {"unsplit": ScoreStream(scorer, lag), **{k: ScoreStream(scorer, lag) for k in order}}
    sizes = {(c, b, coder): [] for c, b in order for coder in coders}
    enc_s = {k: [] for k in sizes}
    samples = {k: [] for k in sizes}
    dominated: set | None = None  # decided on the first batch
    n = sum(len(v) for v in scored.values())
    task = bar.add_task("unsplit + split (all cuts, bits)", total=n)
    for vid, idx in scored.items():
        for s in streams.values():
            s.reset()
        for i in range(0, len(idx), BATCH):
            imgs = np.stack([to_input(native[vid][j], sp.size) for j in idx[i : i + BATCH]])
            res = heads.run(None, {"image": imgs})
            streams["unsplit"].push(res[-1])
            for (cut_name, b), codes in zip(order, res[:-1]):
                for coder in coders:
                    key = (cut_name, b, coder)
                    # zstd's size varies: every scored frame is encoded; raw's is fixed by the shape and bits:
                    # a few frames per video are encoded and the size checked constant
                    every = coder != "raw" or i == 0
                    if not every:
                        sizes[key] += [sizes[key][-1]] * len(codes)
                        continue
                    for f in range(len(codes)):
                        t0 = time.perf_counter()
                        frame = encode_frame([codes[f : f + 1]], b, coder)
                        enc_s[key].append(time.perf_counter() - t0)
                        sizes[key].append(len(frame))
                        if len(samples[key]) < DECODE_SAMPLES:
                            samples[key].append(frame)
                    if coder == "raw" and len(set(sizes[key])) != 1:
                        raise RuntimeError(f"raw coder frames of {key} vary in size: {sorted(set(sizes[key]))}")
                if dominated is None or (cut_name, b) not in dominated:
                    streams[cut_name, b].push(tails[cut_name](codes, sp.qparams[cut_name, b]))
            if dominated is None:
                dominated = {k for k in order if min(np.mean(sizes[(*k, c)]) for c in coders) > raw_frame_bytes}
                for k in dominated:
                    del streams[k]
            bar.advance(task, len(imgs))
    bar.remove_task(task)
    return {"scores": {k: s.result() for k, s in streams.items()}, "dominated": sorted(dominated or ()), "tails": tails, "sizes": sizes, "encode_s": enc_s,
            "samples": samples, "order": order}


def tail_session(sp, cut_name: str, tmp: Path, threads: int):
    """codes, scale, zero point -> features at the scorer's layer: splitter.graphs.Dequantize's ops
    ((codes - zero_point) * scale, in float32) with the parameters as inputs, so that one graph per cut
    serves every bit depth (a session per (cut, bits) would hold ~15 GB of onnxruntime arenas), then the
    network from the cut on, as tail.onnx holds it before its scorer. Returns (codes, QuantParams) -> features."""
    import torch
    from torch import nn

    from splitter.cuts import find_cut, split

    cut = find_cut(sp.stage_cuts, cut_name)
    _, tail = split(sp.model, cut, upto=sp.upto)

    class DequantTail(nn.Module):
        def __init__(self):
            super().__init__()
            self.tail = tail

        def forward(self, codes, scale, zero_point):
            return self.tail((codes.float() - zero_point) * scale)

    c = cut.shape[0]
    args = (torch.zeros(1, *cut.shape, dtype=torch.uint8), torch.ones(1, c, 1, 1), torch.zeros(1, c, 1, 1))
    sess = export_session(DequantTail().eval(), args, tmp / f"tail_{cut_name}.onnx",
                          ["codes", "scale", "zero_point"], ["features"], threads)

    def run(codes: np.ndarray, q) -> np.ndarray:
        scale = np.broadcast_to(np.asarray(q.scale, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1)
        zp = np.broadcast_to(np.asarray(q.zero_point, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1)
        return sess.run(None, {"codes": codes, "scale": np.ascontiguousarray(scale),
                               "zero_point": np.ascontiguousarray(zp)})[0]

    return run


ANS_CODERS = ("ans", "ans-delta")  # rows of the ANS coder: every frame a key frame; the product's stream


def ans_pass(sp, pairs, native: dict, tmp: Path, threads: int, bar, stride: int) -> dict:
    """The ANS coder's bytes for every (cut, bits) in `pairs`, in two passes of the all-codes graph.

    Tables: as Splitter.export fits them (Splitter.coder_entry: codec.entropy_model.fit on the head's codes
    of every frame, in order, of the held-out normal training videos; here codec.entropy_model.Counts, fit's
    own counting, a batch at a time so that no video's codes of every cut are held at once). Then EVERY
    frame of every test video in order, each video its own camera, through codec.stream.StreamEncoder:
      ans        key_interval 1: every frame a key frame (coded against the intra tables);
      ans-delta  the export's key_interval (50): a key frame on the video's first frame and at least every
                 50 frames, the others delta frames against the frame just before (ref distance 1), what
                 the live camera sends. At bits > MAX_INTER_BITS the tables have no inter table and
                 StreamEncoder sends only key frames: its frames are then exactly the ans frames (reused).
    The first DECODE_SAMPLES frames of the first video of every (cut, bits, coder) are decoded as the cloud
    decodes them (decode_frame, References) and must equal the codes; decode ms is their median. Every
    `stride`-th frame is also coded with zstd, as split_pass codes the scored frames: `zstd_sizes`, whose
    mean must be the zstd row's bytes (the same codes, zstd is deterministic)."""
    from codec import decode_frame, encode_frame
    from codec.entropy_model import Counts
    from codec.stream import References, StreamEncoder
    from edge.preprocess import to_input
    from splitter.features import load_frames

    module, order, image = all_codes_module(sp, pairs)
    outs = [f"codes_{c}_{b}" for c, b in order]
    heads = export_session(module, (image,), tmp / "all_codes_ans.onnx", ["image"], [*outs, "features"], threads)
    held = sp.training_videos(True)
    counts = {k: Counts(k[1]) for k in order}
    task = bar.add_task("ANS tables: held-out codes", total=sum(len(v) for v in held.values()))
    for paths in held.values():
        prev = dict.fromkeys(order)
        for i in range(0, len(paths), BATCH):
            res = heads.run(outs, {"image": load_frames(paths[i : i + BATCH], sp.size)})
            for k, codes in zip(order, res):
                counts[k].add(codes, prev[k])
                prev[k] = codes[-1]
            bar.advance(task, min(BATCH, len(paths) - i))
    bar.remove_task(task)
    models = {k: [c.model()] for k, c in counts.items()}
    del counts
    temporal = {k: StreamEncoder(k[1], "ans", models[k], sp.cfg.key_interval).temporal for k in order}
    keys = [(*k, c) for k in order for c in ANS_CODERS]
    sizes, enc_s, samples = ({k: [] for k in keys} for _ in range(3))
    key_frames = dict.fromkeys(keys, 0)
    zstd_sizes = {k: [] for k in order}
    first = next(iter(native))
    task = bar.add_task("ANS: every test frame", total=sum(len(v) for v in native.values()))
    for vid, frames in native.items():
        encoders = {(*k, c): StreamEncoder(k[1], "ans", models[k], sp.cfg.key_interval if c == "ans-delta" else 1)
                    for k in order for c in ANS_CODERS if c == "ans" or temporal[k]}
        for i in range(0, len(frames), BATCH):
            imgs = np.stack([to_input(f, sp.size) for f in frames[i : i + BATCH]])
            res = heads.run(outs, {"image": imgs})
            for k, codes in zip(order, res):
                for f in range(len(codes)):
                    seq = i + f
                    if seq % stride == 0:
                        zstd_sizes[k].append(len(encode_frame([codes[f : f + 1]], k[1], "zstd")))
                    for c in ANS_CODERS:
                        key = (*k, c)
                        # not in encoders: ans-delta without an inter table, whose StreamEncoder sends key
                        # frames only: the ans frame just coded (ANS_CODERS puts ans first)
                        if key in encoders:
                            t0 = time.perf_counter()
                            data = encoders[key].encode([codes[f : f + 1]], seq)
                            dt = time.perf_counter() - t0
                        sizes[key].append(len(data))
                        enc_s[key].append(dt)
                        if vid == first and seq < DECODE_SAMPLES:
                            samples[key].append((data, codes[f : f + 1]))
            bar.advance(task, len(imgs))
        for key, enc in encoders.items():
            key_frames[key] += enc.key_frames
        for k in order:
            if not temporal[k]:
                key_frames[(*k, "ans-delta")] += encoders[(*k, "ans")].key_frames
    bar.remove_task(task)
    dec_s, checked = {}, {}
    for key, items in samples.items():
        refs, times = References(), []
        for seq, (data, codes) in enumerate(items):
            t0 = time.perf_counter()
            back = decode_frame(data, models[key[:2]], refs.lookup("check", seq)).tensors
            times.append(time.perf_counter() - t0)
            refs.update("check", seq, back)
            if not np.array_equal(back[0], codes):
                raise RuntimeError(f"{key}: frame {seq} of video {first} does not decode to its codes")
        dec_s[key], checked[key] = times, len(items)
    return {"order": order, "sizes": sizes, "encode_s": enc_s, "decode_s": dec_s, "decoded_exactly": checked,
            "key_frames": key_frames, "key_interval": sp.cfg.key_interval, "zstd_sizes": zstd_sizes,
            "tables_fitted_on": sorted(held), "heldout_frames": sum(len(v) for v in held.values())}


def ans_rows(rows: list[dict], ans: dict) -> list[dict]:
    """Rows of the ANS coders, one per (cut, bits, coder), from the zstd row of the same (cut, bits): the
    coders are lossless, so the codes, scores and every AUROC figure are that row's; bytes, coding ms and
    head/tail ms (head.onnx / tail.onnx plus this coder's encode / decode) are this coder's."""
    zstd = {(r["cut"], r["bits"]): r for r in rows if r["method"] == "split" and r["coder"] == "zstd"}
    out = []
    for k in ans["order"]:
        base = zstd[k]
        for c in ANS_CODERS:
            key = (*k, c)
            sizes = np.asarray(ans["sizes"][key], np.float64)
            enc = 1e3 * float(np.median(ans["encode_s"][key]))
            dec = 1e3 * float(np.median(ans["decode_s"][key]))
            head, tail = base.get("head_onnx_ms"), base.get("tail_onnx_ms")
            row = dict(base, coder=c, setting=f"{k[0]} {k[1]}-bit {c}", bytes_per_frame=float(sizes.mean()),
                       bytes_p95=float(np.percentile(sizes, 95)), encode_ms=enc, decode_ms=dec)
            row.update(head_ms=None if head is None else head + enc, tail_ms=None if tail is None else dec + tail,
                       frames_encoded=len(sizes), key_frames=ans["key_frames"][key],
                       key_interval=ans["key_interval"] if c == "ans-delta" else 1,
                       decoded_exactly=ans["decoded_exactly"][key])
            out.append(row)
    return out


def with_ans_rows(rows: list[dict], new: list[dict]) -> list[dict]:
    """`rows` less the earlier ANS rows of the (cut, bits) in `new`, with `new` placed after the zstd row of
    their (cut, bits) (ANS rows of other (cut, bits) stay: --methods ans --cuts ... merges a part)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in new:
        by_key.setdefault((r["cut"], r["bits"]), []).append(r)
    replaced, out = set(by_key), []
    for r in rows:
        if r["method"] == "split" and r["coder"] in ANS_CODERS and (r["cut"], r["bits"]) in replaced:
            continue
        out.append(r)
        if r["method"] == "split" and r["coder"] == "zstd":
            out += by_key.pop((r["cut"], r["bits"]), [])
    if by_key:
        raise ValueError(f"ANS rows without a zstd row of their (cut, bits): {sorted(by_key)}")
    return out


def rival_pass(sp, feat_sess, method: str, param: int, native, scored, lag, bar) -> dict:
    """One rival setting: every test video through the codec, decoded, upscaled, float model, scorer."""
    from bench import rivals
    from edge.preprocess import to_input

    stream = ScoreStream(sp.scorer(), lag)
    sizes, enc_s, dec_s, psnr, frames = [], 0.0, 0.0, 0.0, 0
    label = f"{method} {'crf' if method in ('h264', 'h265') else 'q'} {param}"
    task = bar.add_task(label, total=sum(len(v) for v in scored.values()))
    for vid, idx in scored.items():
        stream.reset()
        src = native[vid]
        t0 = time.perf_counter()
        if method in ("h264", "h265"):
            codec_name = {"h264": "libx264", "h265": "libx265"}[method]
            chunks, _ = rivals.encode_video(src, codec_name, param, FPS)
            t1 = time.perf_counter()
            decoded = rivals.decode_video(chunks, codec_name)
            if len(decoded) != len(src):
                raise RuntimeError(f"{method}: encoded {len(src)} frames, decoded {len(decoded)}")
            sizes += [len(c) for c in chunks]
            enc_s, dec_s = enc_s + t1 - t0, dec_s + time.perf_counter() - t1
        else:
            decoded, s = rivals.image_roundtrip(src, method, param)
            sizes += s
            enc_s += time.perf_counter() - t0  # encode + decode: image_roundtrip does both
        psnr += rivals.mean_psnr(src, decoded) * len(src)
        frames += len(src)
        for i in range(0, len(idx), BATCH):
            imgs = np.stack([to_input(decoded[j], sp.size) for j in idx[i : i + BATCH]])
            stream.push(feat_sess.run(None, {"image": imgs})[0])
            bar.advance(task, len(imgs))
    bar.remove_task(task)
    return {"label": label, "scores": stream.result(), "sizes": sizes, "encode_ms": 1e3 * enc_s / frames,
            "decode_ms": 1e3 * dec_s / frames if dec_s else None, "psnr_db": psnr / frames}


def median_ms(fn, n: int = TIMING_FRAMES, warmup: int = 2) -> float:
    times = []
    for i in range(n + warmup):
        t0 = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def time_graphs(sp, cut_names, timing_bits: int, frames: np.ndarray, bench_codes, bench_scores, tmp: Path,
                threads: int, bar) -> dict:
    """Per cut, a real artifact (Splitter.export: head.onnx, tail.onnx, manifest) at `timing_bits`,
    timed through the Pipeline's own Head and Tail with the camera's feature history; and the unsplit
    cloud graph (image -> float features -> scorer) that the unsplit and rival rows run in the cloud.

    The artifact also checks the benchmark's split path on the timing frames: its head's codes against
    bench_codes(cut) and its tail's scores (consecutive frames, fresh history) against bench_scores."""
    from torch import nn

    from cloud.tail import CameraHistory
    from infocut.artifact import load_artifact
    from infocut.pipeline import Pipeline
    from splitter.graphs import AnomalyTailGraph

    out = {}
    task = bar.add_task("timing head.onnx / tail.onnx", total=len(cut_names) + 1)
    for cut_name in cut_names:
        root = tmp / f"artifact_{cut_name}"
        sp.export(root, cut_name, timing_bits)
        pipe = Pipeline(load_artifact(root), threads)
        codes = [pipe.head(frames[i % len(frames)][None]) for i in range(len(frames))]
        head_ms = median_ms(lambda i, pipe=pipe: pipe.head(frames[i % len(frames)][None]))

        def tail_once(i, pipe=pipe, codes=codes):
            prev = pipe.history.previous("t", i)
            scored = pipe.tail(codes[i % len(codes)], prev)
            pipe.history.update("t", i, scored.features)

        tail_ms = median_ms(tail_once)
        refs = bench_codes(cut_name)
        match = float(np.mean([np.array_equal(c[0][0], ref) for c, ref in zip(codes, refs)]))
        equal = float(np.mean(np.concatenate([(c[0][0] == ref).ravel() for c, ref in zip(codes, refs)])))
        hist, art_scores = CameraHistory(sp.cfg.gap), []
        for i, c in enumerate(codes):
            scored = pipe.tail(c, hist.previous("check", i))
            hist.update("check", i, scored.features)
            art_scores.append(scored.score)
        mine = bench_scores(cut_name, np.concatenate([c[0] for c in codes]))
        diff = None if mine is None else float(np.max(np.abs(mine - art_scores) / np.abs(art_scores)))
        out[cut_name] = {"head_onnx_ms": head_ms, "tail_onnx_ms": tail_ms, "artifact_id": pipe.artifact.id,
                         "codes_identical_frames": match, "codes_identical_elements": equal,
                         "scores_vs_artifact_max_rel_diff": diff}
        bar.advance(task)
    g = AnomalyTailGraph(nn.Identity(), sp.features_until(sp.feature_layer), sp.scorer()).eval()
    import torch

    with torch.no_grad():
        feats = g.tail(torch.from_numpy(frames[:1]))
    sess = export_session(g, (torch.from_numpy(frames[:1]), feats, torch.zeros(1)), tmp / "unsplit.onnx",
                          ["image", "prev_features", "has_prev"], ["score", "anomaly_map", "features"], threads)
    hist = CameraHistory(sp.cfg.gap)

    def cloud_once(i):
        prev = hist.previous("t", i)
        has = np.ones(1, np.float32) if prev is not None else np.zeros(1, np.float32)
        prev = prev if prev is not None else np.zeros(feats.shape, np.float32)
        res = sess.run(None, {"image": frames[i % len(frames)][None], "prev_features": prev, "has_prev": has})
        hist.update("t", i, res[2])

    out["unsplit"] = {"cloud_ms": median_ms(cloud_once)}
    bar.advance(task)
    bar.remove_task(task)
    return out


# -- rows, summary, table, plot ---------------------------------------------------------------------


def build_rows(ref, split, rival_runs, timing, labels, boot, smooth_k, cut_shapes, raw_frame_bytes, coders):
    """Rows in the issue's keys, each with its AUROC, smoothed AUROC, bootstrap intervals and drop vs unsplit."""
    from codec import decode_frame

    def scored(scores_by_video):
        raw = np.concatenate(list(scores_by_video.values()))
        smooth = np.concatenate([causal_max(s, smooth_k) for s in scores_by_video.values()])
        return raw, smooth

    ref_raw, ref_smooth = scored(ref)
    ref_s = (boot.samples(ref_raw), boot.samples(ref_smooth))
    ref_au = (auroc(labels, ref_raw), auroc(labels, ref_smooth))

    def stats(scores_by_video) -> dict:
        raw, smooth = scored(scores_by_video)
        out = {}
        for name, s, rs, ra in (("auroc", raw, ref_s[0], ref_au[0]), ("auroc_smoothed", smooth, ref_s[1], ref_au[1])):
            a, samp = auroc(labels, s), boot.samples(s)
            lo, hi = boot.interval(samp)
            dlo, dhi = boot.interval(rs - samp)
            out.update({name: a, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_drop": ra - a,
                        f"{name}_drop_lo": dlo, f"{name}_drop_hi": dhi})
        return out

    def row(method, cut=None, bits=None, coder=None, setting="", sizes=(), head_ms=None, tail_ms=None, **extra):
        sizes = np.asarray(sizes, np.float64)
        return {"method": method, "cut": cut, "bits": bits, "coder": coder, "setting": setting,
                "bytes_per_frame": float(sizes.mean()), "bytes_p95": float(np.percentile(sizes, 95)),
                **extra, "head_ms": head_ms, "tail_ms": tail_ms}

    cloud = timing["unsplit"]["cloud_ms"]
    rows = [row("unsplit", setting="raw RGB frames", sizes=[raw_frame_bytes], head_ms=0.0, tail_ms=cloud,
                **stats(ref))]
    for r in rival_runs:
        tail = cloud + (r["decode_ms"] or 0.0)
        rows.append(row(r["method"], setting=r["label"].split(" ", 1)[1], sizes=r["sizes"], head_ms=r["encode_ms"],
                        tail_ms=tail, param=r["param"], psnr_db=r["psnr_db"], **stats(r["scores"])))
    for cut_name, b in split["order"]:
        if (cut_name, b) in split["scores"]:
            st = stats(split["scores"][cut_name, b])
        else:  # dominated by the raw frame: not evaluated
            st = {f"{m}{x}": None for m in ("auroc", "auroc_smoothed") for x in ("", "_lo", "_hi", "_drop", "_drop_lo", "_drop_hi")}
        shape = cut_shapes[cut_name]
        elements = int(np.prod(shape))
        for coder in coders:
            key = (cut_name, b, coder)
            dec = median_of(decode_frame, split["samples"][key])
            enc = 1e3 * float(np.median(split["encode_s"][key]))
            t = timing.get(cut_name, {})
            head = t.get("head_onnx_ms", np.nan) + enc
            tail = dec + t.get("tail_onnx_ms", np.nan)
            rows.append(row("split", cut_name, b, coder, f"{cut_name} {b}-bit {coder}", split["sizes"][key],
                            head_ms=head, tail_ms=tail, shape=list(shape), elements=elements,
                            packed_bytes=elements * b / 8, encode_ms=enc, decode_ms=dec,
                            head_onnx_ms=t.get("head_onnx_ms"), tail_onnx_ms=t.get("tail_onnx_ms"), **st))
    return rows


def median_of(fn, items) -> float:
    times = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


FAMILIES = ("split", "h264", "h265", "jpeg", "webp", "bottleneck", "prune")  # the last two: --methods rows


def summarize(rows: list[dict], key: str = "auroc") -> dict:
    """Per family, the smallest bytes per frame measured within DROP of unsplit, and the ratios."""
    ref = next(r for r in rows if r["method"] == "unsplit")[key]
    best = {}
    for fam in FAMILIES:
        cands = [r for r in rows if r["method"] == fam]
        cands = [r for r in cands if r[key] is not None]
        ok = [r for r in cands if r[key] >= ref - DROP]
        if not ok:
            best[fam] = None
            continue
        r = min(ok, key=lambda r: r["bytes_per_frame"])
        larger_fail = [x["setting"] for x in cands if x["bytes_per_frame"] > r["bytes_per_frame"] and x[key] < ref - DROP]
        smaller = [x for x in cands if x["bytes_per_frame"] < r["bytes_per_frame"]]
        nxt = max(smaller, key=lambda x: x["bytes_per_frame"]) if smaller else None
        crossing = None
        if fam != "split" and nxt is not None and nxt[key] < r[key]:
            # where the ladder crosses the line, interpolating AUROC linearly in log bytes between the two settings
            t = (ref - DROP - nxt[key]) / (r[key] - nxt[key])
            crossing = float(np.exp(np.log(nxt["bytes_per_frame"])
                                    + t * (np.log(r["bytes_per_frame"]) - np.log(nxt["bytes_per_frame"]))))
        best[fam] = {"bytes_per_frame": r["bytes_per_frame"], "bytes_p95": r["bytes_p95"], "setting": r["setting"],
                     key: r[key], f"{key}_drop": ref - r[key],
                     "next_smaller_setting": nxt["setting"] if nxt else None,
                     "next_smaller_bytes_per_frame": nxt["bytes_per_frame"] if nxt else None,
                     f"next_smaller_{key}": nxt[key] if nxt else None,
                     "crossing_bytes_interpolated": crossing,
                     "larger_settings_outside": larger_fail}
    ratios = {}
    for a in FAMILIES:
        for b in FAMILIES:
            if a != b and best.get(a) and best.get(b):
                ratios[f"{a}/{b}"] = best[a]["bytes_per_frame"] / best[b]["bytes_per_frame"]
    return {"metric": key, "unsplit": ref, "line": ref - DROP, "smallest_within_1pt": best, "ratios": ratios}


def summary_text(s: dict) -> list[str]:
    lines = [f"{s['metric']}: unsplit {s['unsplit']:.4f}; the 1-point line is {s['line']:.4f}"]
    for fam in FAMILIES:
        b = s["smallest_within_1pt"][fam]
        if b is None:
            lines.append(f"  {fam:6s} never within 1 point at the measured settings")
        else:
            note = f"; larger settings outside: {', '.join(b['larger_settings_outside'])}" if b["larger_settings_outside"] else ""
            cross = (f", line crossed at ~{b['crossing_bytes_interpolated']:,.0f} B/frame (interpolated)"
                     if b["crossing_bytes_interpolated"] else "")
            lines.append(f"  {fam:6s} {b['bytes_per_frame']:>10,.0f} B/frame (p95 {b['bytes_p95']:,.0f}) at "
                         f"{b['setting']}: {b[s['metric']]:.4f}{cross}{note}")
    split = s["smallest_within_1pt"]["split"]
    if split:
        lines.append("  the split's bytes over each rival's: " + ", ".join(
            f"split/{fam} {s['ratios'][f'split/{fam}']:.3g}x" for fam in FAMILIES[1:] if f"split/{fam}" in s["ratios"]))
    if "h265/h264" in s["ratios"]:
        lines.append(f"  h265/h264 {s['ratios']['h265/h264']:.3g}x")
    return lines


def markdown(result: dict) -> str:
    """The README's tables from a ped2.json: the smallest bytes within 1 point per family, then every
    zstd split setting and every rival setting."""

    def au(r, k):
        return "dominated by raw" if r[k] is None else f"{r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]"

    lines = [f"Frame AUROC on {result['scored_frames']} scored frames of the {len(result['videos'])} Ped2 test videos "
             f"(stride {result['stride']}), revision {(result['git']['commit'] or '?')[:7]}, "
             f"{result['machine']['cpu_count']} cores ({result['machine']['cpu_model']}), run time "
             f"{result['runtime_s']['total'] / 60:.0f} min.", "",
             "| family | smallest B/frame within 1 point of unsplit (p95) | setting | AUROC | split's bytes ÷ family's |",
             "|---|---:|---|---:|---:|"]
    for key, name in (("auroc", "raw scores"), ("auroc_smoothed", "causal max over 0.5 s")):
        s = result["summary"][key]
        lines.append(f"| **{name}**: unsplit {s['unsplit']:.3f}, line {s['line']:.3f} | | | | |")
        for fam in FAMILIES:
            b = s["smallest_within_1pt"][fam]
            ratio = s["ratios"].get(f"split/{fam}")
            if b is None:
                lines.append(f"| {fam} | not within 1 point at the measured settings | | | |")
            else:
                lines.append(f"| {fam} | {b['bytes_per_frame']:,.0f} ({b['bytes_p95']:,.0f}) | {b['setting']} | "
                             f"{b[key]:.3f} | {'' if ratio is None else f'{ratio:.1f}×'} |")
    lines += coders_markdown(result)
    lines += ["", "| method | setting | B/frame (p95) | AUROC [95% CI] | smoothed | head ms | tail ms |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if r["method"] == "split" and r["coder"] != "zstd":
            continue
        lines.append(f"| {r['method']} | {r['setting']} | {r['bytes_per_frame']:,.0f} ({r['bytes_p95']:,.0f}) | "
                     f"{au(r, 'auroc')} | {au(r, 'auroc_smoothed')} | {_ms(r['head_ms'])} | {_ms(r['tail_ms'])} |")
    return "\n".join(lines) + "\n"


def smallest_per_coder(rows: list[dict], key: str = "auroc") -> dict:
    """Per coder of the split, its row of fewest bytes within DROP of unsplit (None: none is)."""
    ref = next(r for r in rows if r["method"] == "unsplit")[key]
    out = {}
    for r in rows:
        if r["method"] == "split":
            out.setdefault(r["coder"], None)
            best = out[r["coder"]]
            if r[key] is not None and r[key] >= ref - DROP and (best is None or r["bytes_per_frame"] < best["bytes_per_frame"]):
                out[r["coder"]] = r
    return out


def coders_markdown(result: dict) -> list[str]:
    """The split per coder: the smallest within 1 point per coder, then every (cut, bits) with ANS rows."""
    rows = result["rows"]
    if not any(r["method"] == "split" and r["coder"] in ANS_CODERS for r in rows):
        return []
    lines = ["", "| split coder | smallest B/frame within 1 point (p95), raw scores | setting | AUROC | "
                 "smallest within 1 point, smoothed | setting |", "|---|---:|---|---:|---:|---|"]
    raw, smooth = smallest_per_coder(rows, "auroc"), smallest_per_coder(rows, "auroc_smoothed")
    for coder in raw:
        a, b = raw[coder], smooth[coder]
        lines.append(f"| {coder} | " + (f"{a['bytes_per_frame']:,.0f} ({a['bytes_p95']:,.0f}) | {a['setting']} | "
                                        f"{a['auroc']:.3f}" if a else "none | | ") + " | "
                     + (f"{b['bytes_per_frame']:,.0f} | {b['setting']}" if b else "none | ") + " |")
    by = {}
    for r in rows:
        if r["method"] == "split":
            by.setdefault((r["cut"], r["bits"]), {})[r["coder"]] = r
    lines += ["", "| cut | bits | AUROC (drop) | raw | zstd | ans (key frames) | ans-delta (key every 50) (p95) | "
                  "ans-delta ÷ zstd | ans-delta encode / decode ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (cut, bits), cs in by.items():
        if "ans-delta" not in cs:
            continue
        z, d = cs["zstd"], cs["ans-delta"]
        au = "dominated by raw" if z["auroc"] is None else f"{z['auroc']:.3f} ({100 * z['auroc_drop']:+.1f} pt)"
        lines.append(f"| {cut} | {bits} | {au} | {cs['raw']['bytes_per_frame']:,.0f} | {z['bytes_per_frame']:,.0f} | "
                     f"{cs['ans']['bytes_per_frame']:,.0f} | {d['bytes_per_frame']:,.0f} ({d['bytes_p95']:,.0f}) | "
                     f"{d['bytes_per_frame'] / z['bytes_per_frame']:.2f} | {d['encode_ms']:.1f} / {d['decode_ms']:.1f} |")
    return lines


def table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in ("method", "setting", "B/frame", "B p95", "AUROC [95% CI]", "smoothed [95% CI]", "head ms", "tail ms"):
        t.add_column(c, justify="left" if c in ("method", "setting") else "right")
    last = None
    for r in rows:
        if last is not None and r["method"] != last:
            t.add_section()
        last = r["method"]
        t.add_row(
            r["method"], r["setting"], f"{r['bytes_per_frame']:,.0f}", f"{r['bytes_p95']:,.0f}",
            *(f"{r[k]:.4f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]" if r[k] is not None else "dominated by raw"
              for k in ("auroc", "auroc_smoothed")),
            _ms(r["head_ms"]), _ms(r["tail_ms"]),
        )
    return t


def _ms(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.1f}"


def plot_title(n_videos: int, n_scored: int, stride: int) -> str:
    return (f"MobileNetV2 block5 @480x720 + k-NN motion scorer, Ped2 test ({n_videos} videos, {n_scored} scored "
            f"frames, stride {stride})")


def plot(rows: list[dict], path: Path, title: str) -> None:
    plot_style()
    import matplotlib.pyplot as plt

    ref = next(r for r in rows if r["method"] == "unsplit")
    cuts = list(dict.fromkeys(r["cut"] for r in rows if r["method"] == "split"))
    cmap = plt.get_cmap("Blues")  # the split's family colour, darker for later cuts
    coders = {r["coder"] for r in rows if r["method"] == "split"}
    lead = "ans-delta" if "ans-delta" in coders else "zstd"  # the coder whose line is labelled
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharey=True)
    for ax, key, name in ((axes[0], "auroc", "raw frame scores"),
                          (axes[1], "auroc_smoothed", f"causal max over the last {SMOOTH_SECONDS:g} s")):
        for fam in ("h264", "h265", "jpeg", "webp"):
            rs = sorted((r for r in rows if r["method"] == fam), key=lambda r: r["bytes_per_frame"])
            if not rs:
                continue
            x, y = [r["bytes_per_frame"] for r in rs], [r[key] for r in rs]
            ax.plot(x, y, "o-", color=COLORS[fam], label=fam, lw=1.6, ms=4)
            for r in rs:
                ax.annotate(str(r["param"]), (r["bytes_per_frame"], r[key]), textcoords="offset points",
                            xytext=(3, -9), fontsize=6, color=COLORS[fam])
        for i, cut in enumerate(cuts):
            color = cmap(0.4 + 0.6 * i / max(1, len(cuts) - 1))
            for coder, style, alpha in (("ans-delta", "o-", 0.95), ("ans", "^-.", 0.6), ("zstd", "s--", 0.6),
                                        ("raw", "x:", 0.35)):
                rs = sorted((r for r in rows if r["method"] == "split" and r["cut"] == cut and r["coder"] == coder
                             and r[key] is not None),
                            key=lambda r: r["bytes_per_frame"])
                if not rs:
                    continue
                label = f"split {cut} ({coder})" if coder == lead else None
                ax.plot([r["bytes_per_frame"] for r in rs], [r[key] for r in rs], style, color=color, alpha=alpha,
                        ms=4, lw=1.2, label=label)
                if coder == lead:
                    for r in rs:
                        ax.annotate(str(r["bits"]), (r["bytes_per_frame"], r[key]), textcoords="offset points",
                                    xytext=(2, 4), fontsize=6, color=color)
        ax.plot([ref["bytes_per_frame"]], [ref[key]], "*", color=COLORS["unsplit"], ms=12,
                label=f"unsplit, raw frames ({ref[key]:.3f})")
        ax.axhline(ref[key], color="0.3", lw=0.8)
        ax.axhline(ref[key] - DROP, color="0.3", ls="--", lw=1.2, label="unsplit - 1 point")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per frame (mean, log scale)")
        ax.set_title(f"{name}")
        ax.grid(True, which="both", alpha=0.25)
    lo = min(r[k] for r in rows for k in ("auroc", "auroc_smoothed") if r[k] is not None)
    axes[0].set_ylim(max(0.4, lo - 0.02), min(1.0, max(ref["auroc"], ref["auroc_smoothed"]) + 0.02))
    axes[0].set_ylabel("frame-level AUROC, Ped2 test")
    axes[1].legend(loc="lower right", fontsize=7, ncol=2)
    lines = ("ANS delta frames (key every 50) solid, ANS key frames only dash-dot, zstd dashed, raw dotted"
             if lead == "ans-delta" else "zstd dashed, raw dotted")
    fig.suptitle(title + f"\nsplit lines: bits 8..2 per cut ({lines}); rival labels: CRF / quality", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------


HOW = {
    "detector": "MobileNetV2 (build/mobilenet_v2.npz) up to block5 at 480x720 (Ped2 upscaled 2x, cv2 INTER_LINEAR as "
                "edge.preprocess.to_input) + splitter.scorer.MotionKnnScorer (gap 2, topk 50, bank 1024), fitted once "
                "by ScorerFit on the float features of the training videos less the held-out ones, exactly as "
                "Splitter.scorer (features computed by onnxruntime from the torch model's ONNX export, cached).",
    "scored_frames": "frames t = 0, stride, 2*stride, ... of every test video; each scored against the features of "
                     "frame t - gap (a scored frame too, since gap is a multiple of stride), without motion for t < gap, "
                     "as the cloud's CameraHistory scores a live stream; every video is its own camera.",
    "auroc": "frame-level ROC AUC over the scored frames of all test videos pooled (labels from labels.json), "
             "raw scores; no per-video normalization.",
    "auroc_smoothed": "the same after a causal max over the scores of the frames within the last 0.5 s (t-4..t at "
                      "10 fps; with stride 2: t, t-2, t-4), restarting with every video: no future frame is used.",
    "auroc_drop": "unsplit AUROC minus the row's, on the same frames; _lo/_hi its paired bootstrap interval.",
    "bytes_per_frame": "mean over frames of the actual encoded frame's size; bytes_p95 its 95th percentile.",
    "unsplit_bytes": "an uncompressed 360x240 RGB frame (259,200 B), what 'raw frames to the cloud' costs.",
    "split_bytes": "codec.encode_frame (framing and CRC included) of the head's codes of one frame, shaped (1,C,H,W) "
                   "as the edge sends them. zstd: every scored frame encoded (frames are coded independently, so the "
                   "scored frames are an unbiased sample of all). raw: its size is fixed by shape and bits; the first "
                   "frames of each video are encoded and the size checked constant.",
    "split_bytes_ans": "coder ans / ans-delta: codec.stream.StreamEncoder with the ANS coder (codec.encode_frame, "
                       "framing and CRC included) over EVERY frame of each test video in order, each video its own "
                       "camera; tables fitted as Splitter.export fits them (codec.entropy_model on the head's codes of "
                       "every frame of the held-out normal training videos, never test video). ans: key_interval 1, "
                       "every frame a key frame (intra tables); ans-delta: key_interval 50 as exported, a key frame "
                       "at each video's start and every 50 frames, the others delta frames against the previous "
                       "frame (ref distance 1); at 6 and 8 bits the tables have no inter table and it sends key "
                       "frames only (= ans). Lossless: AUROC figures are the zstd row's of the same (cut, bits). "
                       "The first frames of the first video are decoded back (decode_frame, References) and "
                       "checked bit exact; encode/decode ms: medians; head_ms/tail_ms: head/tail.onnx plus them.",
    "split_codes": "computed by one ONNX graph holding, after every cut, splitter.graphs.Quantize (the very op that "
                   "ends head.onnx) with the cut's parameters for each bit depth; parameters from codec.calibrate "
                   "(per channel, percentile 99.99) on the activations of the frames Splitter.calibrate uses, in "
                   "onnxruntime (cached). Checked against a real exported artifact's head.onnx on the timing frames "
                   "(codes_identical_* under timing).",
    "dominated": "a split (cut, bits) whose first frames, with the best coder, take more bytes than the raw RGB "
                 "frame (259,200 B) is dominated by sending that frame to the unsplit model (fewer bytes, exact, no "
                 "edge compute): its bytes are measured on every scored frame, its tail and AUROC are not run (null).",
    "split_scores": "per cut an ONNX graph: splitter.graphs.Dequantize's ops with the (cut, bits) parameters as "
                    "inputs, then the network from the cut to block5 (what tail.onnx holds before its scorer), in "
                    "onnxruntime; then the fitted scorer. Checked against a real artifact's tail.onnx on the timing "
                    "frames (scores_vs_artifact_max_rel_diff under timing).",
    "scorer_math": "MotionKnnScorer's frame score computed with one batched GEMM (baddbmm) instead of its forward's "
                   "three terms: same math, float rounding aside (scorer_check).",
    "rival_bytes": "h264/h265: each frame's packet of one stream per test video (bench.rivals.encode_video: "
                   "zerolatency, 2 s GOP, SEI dropped; parameter sets in the first frame's packet); jpeg/webp: each "
                   "frame's file (bench.rivals.image_roundtrip). Over all frames, not only the scored ones.",
    "rival_scores": "decoded frames (all decoded in order; the scored ones upscaled) through the float model "
                    "(onnxruntime) and the same scorer.",
    "head_ms": "split: median head.onnx (batch 1) of a real artifact exported per cut (Splitter.export with the "
               "cached calibration; 8 bits: the head's cost does not depend on bits) through infocut.pipeline's "
               "Head, plus the median codec.encode_frame of that (cut, bits, coder); h264/h265: encode_video wall "
               "time per frame (mean, one encoder thread); jpeg/webp: image_roundtrip (encode + decode) per frame "
               "(mean); unsplit: 0 (the camera sends raw frames). Resizing to 480x720 is counted nowhere.",
    "tail_ms": "split: median codec.decode_frame of that (cut, bits, coder) plus the median tail.onnx with the "
               "camera's feature history (Pipeline's Tail and CameraHistory); unsplit and rivals: the median of one "
               "graph image -> float model -> scorer with the history (the cloud's whole model), plus for "
               "h264/h265 decode_video time per frame (mean).",
    "timing": "onnxruntime CPUExecutionProvider, intra-op threads as given (0: onnxruntime's default), batch 1, "
              f"{TIMING_FRAMES} runs after 2 warm-up runs on test frames; the measurement passes run batch {BATCH}.",
}


def check_zstd(ans: dict, zstd_sizes: dict) -> dict:
    """The ANS pass's codes against the split pass's (or a ped2.json's zstd rows): the zstd frames of the
    same scored frames must be exactly as large. `zstd_sizes`: {(cut, bits, "zstd"): sizes} or
    {(cut, bits): bytes_per_frame}."""
    out = {}
    for k in ans["order"]:
        mine = float(np.mean(ans["zstd_sizes"][k]))
        theirs = zstd_sizes.get((*k, "zstd"), zstd_sizes.get(k))
        theirs = float(np.mean(theirs)) if not isinstance(theirs, float) else theirs
        if abs(mine - theirs) > 1e-6 * theirs:
            raise RuntimeError(f"{k}: zstd bytes of the ANS pass's codes {mine:,.2f}, the split's {theirs:,.2f}: "
                               "not the same codes (calibration or graph changed?)")
        out[f"{k[0]} {k[1]}-bit"] = mine
    return out


def ans_summary(ans: dict) -> dict:
    return {"key_interval": ans["key_interval"], "tables_fitted_on": ans["tables_fitted_on"],
            "heldout_frames": ans["heldout_frames"], "frames_encoded": len(next(iter(ans["sizes"].values()))),
            "zstd_bytes_check": "the scored frames' codes of the ANS pass coded with zstd: equal to the zstd rows' "
                                "bytes (the same codes)"}


def main_ans(args, out, sp, cuts, pairs, videos, cache, calib_deps, bits_list, console, git, start) -> None:
    """--methods ans: the ANS rows alone (ans_pass over every test frame) merged into an existing ped2.json,
    their AUROC figures from its zstd rows of the same (cut, bits); the quantizer calibration from the cache."""

    if args.quick and args.out:
        raise SystemExit("--methods ans --quick measures 2 videos: it prints, it does not merge into a ped2.json")
    path = None if out is None else out / "ped2.json"
    doc = json.loads(path.read_text()) if path is not None else None
    if doc is not None and doc["videos"] != list(videos):
        raise SystemExit(f"{path} was measured on videos {doc['videos']}, not {list(videos)}")
    with tempfile.TemporaryDirectory(prefix="ped2-ans-") as tmpdir, progress(console, 34) as bar:
        tmp = Path(tmpdir)
        sp.qparams = calibrate_all(sp, cuts, sorted(set(BITS) | set(bits_list) | {8}), tmp, args.threads, cache,
                                   calib_deps, bar)
        native = read_videos(videos, bar)
        t0 = time.perf_counter()
        ans = ans_pass(sp, pairs, native, tmp, args.threads, bar, doc["stride"] if doc else args.stride)
        seconds = time.perf_counter() - t0
    for k in ans["order"]:
        z = np.mean(ans["zstd_sizes"][k])
        console.print(f"{k[0]} {k[1]}-bit: zstd {z:,.0f}, " + ", ".join(
            f"{c} {np.mean(ans['sizes'][(*k, c)]):,.0f}" for c in ANS_CODERS) + " B/frame", highlight=False)
    if doc is None:
        return
    import fcntl

    lock = open(path.with_suffix(".lock"), "w")  # two --methods ans runs (different cuts) may merge at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    doc = json.loads(path.read_text())
    zstd = {(r["cut"], r["bits"]): r["bytes_per_frame"] for r in doc["rows"]
            if r["method"] == "split" and r["coder"] == "zstd"}
    check = check_zstd(ans, zstd)
    doc["rows"] = with_ans_rows(doc["rows"], ans_rows(doc["rows"], ans))
    doc["summary"] = {"auroc": summarize(doc["rows"], "auroc"), "auroc_smoothed": summarize(doc["rows"], "auroc_smoothed")}
    doc["grid"]["coders"] = [c for c in doc["grid"]["coders"] if c not in ANS_CODERS] + list(ANS_CODERS)
    doc["how"]["split_bytes_ans"] = HOW["split_bytes_ans"]
    doc["ans"] = ans_summary(ans)
    # one record per --methods ans run whose rows are in the file (a run of other cuts keeps its record)
    measured = [f"{c} {b}-bit" for c, b in ans["order"]]
    runs = doc.setdefault("extra_runs", {}).get("ans", [])
    runs = [r for r in runs if not set(r["settings"]) <= set(measured)]
    doc["extra_runs"]["ans"] = [*runs, {
        "settings": measured, "git": git, "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(args.threads), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds,
        "total_seconds": time.perf_counter() - start, "zstd_bytes_check": check,
        "load_average_at_end": list(os.getloadavg())}]
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    plot(doc["rows"], out / "ped2.png", plot_title(len(doc["videos"]), doc["scored_frames"], doc["stride"]))
    for key in ("auroc", "auroc_smoothed"):
        for line in summary_text(doc["summary"][key]):
            console.print(line)
    lock.close()
    console.print(f"merged {2 * len(ans['order'])} ANS rows into {path} and redrew {out / 'ped2.png'} "
                  f"({time.perf_counter() - start:.0f} s)")


def read_videos(videos: dict, bar) -> dict:
    """The test frames as native RGB arrays, per video, with a progress bar."""
    from infocut import ped2

    task = bar.add_task("reading test frames", total=sum(len(v) for v in videos.values()))
    native = {}
    for vid, paths in videos.items():
        native[vid] = [ped2.read_rgb(p) for p in paths]
        bar.advance(task, len(paths))
    bar.remove_task(task)
    return native


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: first {QUICK_VIDEOS} test videos, CRF {QUICK_CRFS}, q {QUICK_QUALITIES}, "
                             f"bits {QUICK_BITS}; writes files only with --out")
    parser.add_argument("--stride", type=int, default=2, help="score every n-th frame; must divide the scorer's gap "
                                                              "(default 2; 1 scores every frame, about 2x longer)")
    parser.add_argument("--crf", help=f"comma-separated CRFs for h264 and h265 (default {','.join(map(str, CRFS))})")
    parser.add_argument("--quality", help=f"comma-separated JPEG/WebP qualities (default "
                                          f"{','.join(map(str, QUALITIES))})")
    parser.add_argument("--bits", help=f"comma-separated bit depths of the split (default {','.join(map(str, BITS))})")
    parser.add_argument("--cuts", help="comma-separated cuts (default: every candidate cut up to block5)")
    parser.add_argument("--rivals", default="h264,h265,jpeg,webp", help="which rivals (default all; '' for none)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default 0: its default)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"cache folder for training features and calibration (default "
                             f"{DEFAULT_CACHE.relative_to(REPO)}); --cache '' disables it")
    parser.add_argument("--out", type=Path, help=f"folder for ped2.json and ped2.png (default "
                                                 f"{RESULTS.relative_to(REPO)}, none with --quick)")
    parser.add_argument("--methods", help="run only these new row families and merge them into the existing "
                                          "ped2.json (replacing their old rows): bottleneck, prune (bench/bottleneck.py)")
    parser.add_argument("--steps", type=int, help="--methods bottleneck: training steps per setting")
    parser.add_argument("--from-cache", action="store_true",
                        help="--methods: measure nothing, merge every row measured so far (.cache/bottleneck/rows)")
    parser.add_argument("--grid", help="--methods bottleneck: settings CUT:K:STRIDE:BITS:LAMBDA, comma-separated "
                                       "(default bench/bottleneck.py's GRID)")
    parser.add_argument("--prune-grid", help="--methods prune: settings CUT:KEEP:BITS, comma-separated "
                                             "(default bench/bottleneck.py's PRUNE_GRID)")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="print the README's markdown tables from a ped2.json and exit (runs nothing)")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="redraw ped2.png next to a ped2.json from its rows and exit (runs nothing)")
    args = parser.parse_args(argv)
    if args.replot:
        doc = json.loads(args.replot.read_text())
        plot(doc["rows"], args.replot.with_suffix(".png"), plot_title(len(doc["videos"]), doc["scored_frames"],
                                                                       doc["stride"]))
        print(f"wrote {args.replot.with_suffix('.png')}")
        return
    if args.report:
        print(markdown(json.loads(args.report.read_text())), end="")
        return
    out = args.out if args.out else (None if args.quick else RESULTS)
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if bad := [m for m in methods if m not in ("bottleneck", "prune", "ans")]:
            raise SystemExit(f"--methods: {bad}: only bottleneck, prune and ans run alone (the full run does the rest)")
        ans_only = "ans" in methods
        methods = [m for m in methods if m != "ans"]
    else:
        ans_only, methods = False, []
    if methods:
        from bench import bottleneck

        def settings(text, default, types):
            """CUT:K:...; bottleneck settings may end in :key=value options of BottleneckConfig (arch=linear,
            init=pca, background=1, step=2, steps=0, pretrain_steps=...)."""
            if not text:
                return default
            out = []
            for item in (i for i in text.split(",") if i.strip()):
                parts = item.split(":")
                row = tuple(t(v) for t, v in zip(types, parts[: len(types)], strict=True))
                opts = dict(kv.split("=", 1) for kv in parts[len(types):])
                out.append((*row, opts) if opts else row)
            return tuple(out)

        grid = settings(args.grid, bottleneck.GRID, (str, int, int, int, float))
        prune_grid = settings(args.prune_grid, bottleneck.PRUNE_GRID, (str, int, int))
        if args.from_cache:
            result = {"rows": [r for r in bottleneck.cached_rows() if r["method"] in methods],
                      "note": "rows measured earlier, collected from .cache/bottleneck/rows (see each row's measured_at)"}
        else:
            result = bottleneck.run(methods, grid=grid, prune_grid=prune_grid, steps=args.steps)
        if out is not None:
            result.update(git=git_revision(), command=shlex.join(["python", *sys.argv]), machine=machine_info(0),
                          created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), how=bottleneck.HOW)
            bottleneck.merge(result, out / "ped2.json")
            print(f"merged {len(result['rows'])} rows into {out / 'ped2.json'}")
        if not ans_only:
            return
    if ans_only and args.from_cache:
        raise SystemExit("--methods ans measures its rows (no cache of rows to merge)")

    def ints(s, default):
        return tuple(int(x) for x in s.split(",") if x.strip()) if s is not None else default

    crfs = ints(args.crf, QUICK_CRFS if args.quick else CRFS)
    qualities = ints(args.quality, QUICK_QUALITIES if args.quick else QUALITIES)
    bits_list = ints(args.bits, QUICK_BITS if args.quick else BITS)
    rival_names = [r.strip() for r in args.rivals.split(",") if r.strip()]
    if bad := [r for r in rival_names if r not in ("h264", "h265", "jpeg", "webp")]:
        raise SystemExit(f"unknown rival(s) {bad}: choose from h264, h265, jpeg, webp")

    try:
        require_shared("data", "ucsd_ped2")
    except FileNotFoundError as e:
        raise SystemExit(f"bench/ped2.py: {e}") from None

    import onnxruntime as ort
    import torch
    from rich.console import Console

    from codec.coders import standalone as coder_names
    from infocut import ped2
    from infocut.artifact import sha256_file
    from splitter.loader import resolve

    git = git_revision()  # before the run: the revision that produced the numbers
    console = Console(width=None if sys.stdout.isatty() else 160)
    start = time.perf_counter()
    cfg = detector_config()
    if cfg.gap % args.stride:
        raise SystemExit(f"--stride {args.stride} must divide the scorer's gap ({cfg.gap})")
    lag = cfg.gap // args.stride
    try:
        weights = resolve(cfg.model)[1]
    except FileNotFoundError as e:
        raise SystemExit(f"bench/ped2.py: {e}") from None
    sp = make_splitter(cfg)
    cuts = sp.stage_cuts
    if args.cuts:
        wanted = [c.strip() for c in args.cuts.split(",") if c.strip()]
        if bad := [w for w in wanted if w not in {c.name for c in cuts}]:
            raise SystemExit(f"unknown cut(s) {', '.join(bad)}; candidates: {', '.join(c.name for c in cuts)}")
        cuts = [c for c in cuts if c.name in wanted]
    cut_names = [c.name for c in cuts]
    pairs = [(c, b) for c in cut_names for b in bits_list]
    coders = coder_names()
    cache = Cache(args.cache if str(args.cache) else None)
    deps = {"weights_sha256": sha256_file(weights), "model": cfg.model, "size": list(sp.size),
            "sources": digest_files(FEATURE_SOURCES), "onnxruntime": ort.__version__}
    calib_deps = dict(deps, sources=digest_files(CALIB_SOURCES))

    videos = ped2.videos("testing")
    if args.quick:
        videos = dict(list(videos.items())[:QUICK_VIDEOS])
    all_labels = ped2.labels()
    for vid, paths in videos.items():
        if len(all_labels[vid]) != len(paths):
            raise SystemExit(f"test video {vid}: {len(paths)} frames but labels.json says {len(all_labels[vid])}")
    if ans_only:
        return main_ans(args, out, sp, cuts, pairs, videos, cache, calib_deps, bits_list, console, git, start)
    scored = {vid: list(range(0, len(paths), args.stride)) for vid, paths in videos.items()}
    labels = np.concatenate([all_labels[v][idx] for v, idx in scored.items()])
    n_scored = len(labels)
    boot = Bootstrap(labels, draws=args.boot, seed=0)
    smooth_k = (int(round(SMOOTH_SECONDS * FPS)) - 1) // args.stride + 1  # frames t-4..t: 5 (stride 1), 3 (stride 2)
    rival_settings = [(m, p) for m in rival_names for p in (crfs if m in ("h264", "h265") else qualities)]
    secs = {}

    with tempfile.TemporaryDirectory(prefix="ped2-bench-") as tmpdir, progress(console, 34) as bar:
        tmp = Path(tmpdir)
        overall = bar.add_task("benchmark", total=5 + len(rival_settings))
        t0 = time.perf_counter()
        feat_net = sp.features_until(sp.feature_layer)
        feat_sess = export_session(feat_net, (_zeros_image(sp),), tmp / "features.onnx", ["image"], ["features"],
                                   args.threads)
        sp.fit_features = lambda: fit_features(sp, feat_sess, cache, deps, bar)
        sp.scorer()
        secs["scorer_fit"] = time.perf_counter() - t0
        bar.advance(overall)
        bar.console.print(f"scorer fitted ({secs['scorer_fit']:.0f} s)")

        t0 = time.perf_counter()
        # every bit depth of the default grid (and 8, the timing artifacts'), so one cache entry serves all runs
        sp.qparams = calibrate_all(sp, cuts, sorted(set(BITS) | set(bits_list) | {8}), tmp, args.threads, cache, calib_deps, bar)
        secs["calibration"] = time.perf_counter() - t0
        bar.advance(overall)

        native = read_videos(videos, bar)
        raw_frame_bytes = int(native[next(iter(native))][0].size)
        bar.advance(overall)

        t0 = time.perf_counter()
        split = split_pass(sp, pairs, coders, native, scored, lag, tmp, args.threads, bar, raw_frame_bytes)
        secs["unsplit_and_split"] = time.perf_counter() - t0
        ref_scores = split["scores"]["unsplit"]
        ref = auroc(labels, ref_scores)
        bar.console.print(f"unsplit AUROC {ref:.4f} on {n_scored} scored frames; split pass "
                          f"{secs['unsplit_and_split']:.0f} s")
        t0 = time.perf_counter()
        ans = ans_pass(sp, pairs, native, tmp, args.threads, bar, args.stride)
        check_zstd(ans, split["sizes"])
        secs["ans"] = time.perf_counter() - t0
        bar.console.print(f"ANS pass (every test frame, every cut and bits) {secs['ans']:.0f} s")
        bar.advance(overall)

        # the scorer shortcut against MotionKnnScorer's own forward, on the first scored frames of the first video
        vid0 = next(iter(scored))
        imgs = np.stack([ped2.read_rgb(videos[vid0][j], sp.size) for j in scored[vid0][: lag + 3]])
        f = torch.from_numpy(run_batched(feat_sess, imgs))
        prev, has = torch.cat([f[:lag], f[:-lag]]), (torch.arange(len(f)) >= lag).float()
        with torch.no_grad():
            exact = sp.scorer()(f, prev, has)[0].numpy()
        fast = knn_scores(sp.scorer(), f, prev, has)
        scorer_check = {"frames": len(f), "max_rel_diff": float(np.max(np.abs(fast - exact) / np.abs(exact))),
                        "vs_unsplit_pass_max_rel_diff": float(np.max(np.abs(fast - ref_scores[: len(f)])
                                                                     / np.abs(fast)))}

        rival_runs = []
        for method, param in rival_settings:
            t0 = time.perf_counter()
            r = rival_pass(sp, feat_sess, method, param, native, scored, lag, bar)
            r.update(method=method, param=param, seconds=time.perf_counter() - t0)
            rival_runs.append(r)
            bar.console.print(f"{r['label']}: {np.mean(r['sizes']):,.0f} B/frame, AUROC {auroc(labels, r['scores']):.4f}"
                              f" ({r['seconds']:.0f} s)")
            bar.advance(overall)
        secs["rivals"] = sum(r["seconds"] for r in rival_runs)

        t0 = time.perf_counter()
        timing_frames = np.stack([ped2.read_rgb(p, sp.size) for p in videos[vid0][:TIMING_FRAMES]])

        def bench_codes(cut_name):
            # the same frames through the all-codes graph at 8 bits: what head.onnx must reproduce
            module_codes = []
            for i in range(0, len(timing_frames), BATCH):
                res = split_timing_heads.run([f"codes_{cut_name}_8"], {"image": timing_frames[i : i + BATCH]})[0]
                module_codes += list(res)
            return module_codes

        module, order8, image = all_codes_module(sp, [(c, 8) for c in cut_names])
        split_timing_heads = export_session(module, (image,), tmp / "all_codes_8.onnx", ["image"],
                                            [f"codes_{c}_{b}" for c, b in order8] + ["features"], args.threads)

        def bench_scores(cut_name, codes):
            # the split pass's tail graph and scoring on consecutive frames (lag = the scorer's gap)
            stream = ScoreStream(sp.scorer(), cfg.gap)
            for i in range(0, len(codes), BATCH):
                stream.push(split["tails"][cut_name](codes[i : i + BATCH], sp.qparams[cut_name, 8]))
            return stream.result()

        timing = time_graphs(sp, cut_names, 8, timing_frames, bench_codes, bench_scores, tmp, args.threads, bar)
        split.pop("tails")
        secs["timing"] = time.perf_counter() - t0
        bar.advance(overall)

    # per-video score arrays, for the smoothing (which restarts with every video)
    def per_video(scores):
        out, i = {}, 0
        for vid, idx in scored.items():
            out[vid] = scores[i : i + len(idx)]
            i += len(idx)
        return out

    split["scores"] = {k: per_video(v) for k, v in split["scores"].items()}
    for r in rival_runs:
        r["scores"] = per_video(r["scores"])
    cut_shapes = {c.name: c.shape for c in cuts}
    rows = build_rows(split["scores"]["unsplit"], split, rival_runs, timing, labels, boot, smooth_k, cut_shapes,
                      raw_frame_bytes, coders)
    rows = with_ans_rows(rows, ans_rows(rows, ans))
    summary = {"auroc": summarize(rows, "auroc"), "auroc_smoothed": summarize(rows, "auroc_smoothed")}
    runtime = time.perf_counter() - start
    secs["total"] = runtime
    usage = resource.getrusage(resource.RUSAGE_SELF)
    secs["cpu_user_plus_system"] = usage.ru_utime + usage.ru_stime
    peak_rss_gb = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux

    title = plot_title(len(videos), n_scored, args.stride)
    console.print(table(rows, title))
    for key in ("auroc", "auroc_smoothed"):
        for line in summary_text(summary[key]):
            console.print(line)
    console.print(f"scorer check: max relative difference {scorer_check['max_rel_diff']:.2e}; total {runtime:.0f} s "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in secs.items() if k != 'total')}); peak RSS {peak_rss_gb:.1f} GiB")
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ped2",
        "model": cfg.model,
        "input_size": list(sp.size),
        "feature_layer": sp.feature_layer,
        "split_config": asdict(cfg),
        "videos": list(videos),
        "stride": args.stride,
        "scored_frames": n_scored,
        "anomalous_scored_frames": int(labels.sum()),
        "fps": FPS,
        "smoothing": {"kind": "causal max", "window_s": SMOOTH_SECONDS, "scored_frames_in_window": smooth_k},
        "bootstrap": boot.describe(),
        "unsplit_auroc": ref,
        "summary": summary,
        "rows": rows,
        "grid": {"crf": list(crfs), "quality": list(qualities), "bits": list(bits_list), "cuts": cut_names,
                 "coders": [*coders, *ANS_CODERS], "rivals": rival_names},
        "dominated_by_raw_frame": [f"{c} {b}-bit" for c, b in split["dominated"]],
        "ans": ans_summary(ans),
        "timing": timing,
        "scorer_check": scorer_check,
        "how": HOW,
        "git": git,
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(args.threads),
        "runtime_s": secs,
        "peak_rss_gib": peak_rss_gb,
        "load_average_at_end": list(os.getloadavg()),
        "cache": str(args.cache) if str(args.cache) else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "ped2.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    plot(rows, out / "ped2.png", title)
    console.print(f"wrote {out / 'ped2.json'} and {out / 'ped2.png'}")


if __name__ == "__main__":
    main()
