"""A learned bottleneck at a cut, trained by head-network distillation, and entropy-guided channel pruning.

The head ends, after the cut, in a small encoder: a 3x3 convolution (stride 1 or 2) to `hidden`
channels, ReLU, a 1x1 convolution to K channels whose outputs are *in code units*: the quantizer that
ends head.onnx is splitter.graphs.Quantize with scale 1 and zero point 0, i.e. clamp(round(y), 0,
2^B - 1), so the encoder's last convolution carries the learned scale and offset. The tail starts with
splitter.graphs.Dequantize (the same unit parameters) and a decoder back to the cut's tensor (1x1 conv,
PixelShuffle when the encoder strides, two 3x3 convs), then the frozen network up to the scored layer.

Training (`train`) is head-network distillation on normal frames only, no labels: the frozen network
up to the cut and the teacher's scored features are cached once (`FeatureCache`), and the student is
cut -> encoder -> quantize -> decoder -> frozen rest, on random crops. Its loss is

    D + lambda * R

D: the squared error of the student's scored features to the teacher's, per channel divided by the
teacher's variance, plus the same for the change between two frames `gap` apart (what the motion
scorer reads), again per channel normalized; R: the rate in kB per (full) frame under a learned
per-channel factorized density of the codes (`CodeDensity`, a mixture of logistics discretized to the
integer codes 0..2^B-1, the two end codes taking the tails), evaluated on the latent plus uniform noise;
the decoder sees the straight-through rounded, clamped codes (what it gets at run time).

Pruning (`prune_channels`) is the training-free alternative: quantize the cut tensor per channel at B
bits as the plain split does, keep the N channels of highest code entropy on the calibration frames,
send only those; the tail fills every dropped channel with its mean.

Weights are saved as safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# modules


@dataclass
class BottleneckConfig:
    cut: str = "block3"
    channels: int = 4  # K, the code channels
    stride: int = 1  # 1 or 2: the encoder's spatial stride
    bits: int = 3  # B: codes in 0..2^B-1
    lam: float = 0.01  # weight of the rate (kB per frame) against the normalized distortion
    hidden: int = 16  # the encoder's hidden channels (edge FLOPs)
    dec_hidden: int = 32  # the decoder's hidden channels (cloud)
    mixtures: int = 3  # logistics per channel in the density
    motion_weight: float = 1.0  # weight of the change-over-gap term in D
    gap: int = 2
    steps: int = 200  # through the frozen tail, on the scored features
    pretrain_steps: int = 0  # before them: on the cut tensor itself (no tail: cheaper steps)
    batch: int = 6  # pairs of frames `gap` apart per step
    crop: int = 24  # crop side at the cut's resolution
    lr: float = 3e-3
    seed: int = 0
    arch: str = "conv"  # conv: the networks above; linear: average pool + 1x1 conv, transposed conv back
    init: str = "random"  # random, or pca: the linear maps start as the principal components of the cut
    background: bool = False  # code the cut tensor minus its per-location mean on the normal frames
    step: float = 1.0  # pca init: quantizer step, in units of (p99.9 of |component|) / (2^(B-1) - 0.5)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1


class Encoder(nn.Module):
    def __init__(self, cin: int, k: int, stride: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, hidden, 3, stride, padding=1)
        self.proj = nn.Conv2d(hidden, k, 1)

    def forward(self, x):
        return self.proj(F.relu(self.conv(x)))


class Decoder(nn.Module):
    def __init__(self, k: int, cout: int, stride: int, hidden: int):
        super().__init__()
        self.stride = stride
        self.inp = nn.Conv2d(k, hidden * stride * stride, 1)
        self.up = nn.PixelShuffle(stride) if stride > 1 else nn.Identity()
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, cout, 3, padding=1)

    def forward(self, codes_float):
        x = F.relu(self.up(self.inp(codes_float)))
        return self.out(F.relu(self.mid(x)))


class LinearEncoder(nn.Module):
    """Average pool over stride x stride, then a 1x1 projection to K channels (PCA-initializable)."""

    def __init__(self, cin: int, k: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.proj = nn.Conv2d(cin, k, 1)

    def forward(self, x):
        return self.proj(self.pool(x))


class LinearDecoder(nn.Module):
    """A transposed conv (kernel = stride): each code position back to its stride x stride block."""

    def __init__(self, k: int, cout: int, stride: int):
        super().__init__()
        self.out = nn.ConvTranspose2d(k, cout, stride, stride)

    def forward(self, codes_float):
        return self.out(codes_float)


class CodeDensity(nn.Module):
    """A per-channel factorized density of integer codes 0..qmax: a mixture of logistics, discretized
    to unit bins, the first and last code taking the tails. Differentiable in its input (for the rate
    term on the noisy latent) and in its parameters."""

    def __init__(self, channels: int, qmax: int, mixtures: int = 3):
        super().__init__()
        self.qmax = qmax
        self.mean = nn.Parameter(torch.linspace(0.0, float(qmax), mixtures).repeat(channels, 1))
        self.log_scale = nn.Parameter(torch.full((channels, mixtures), math.log(max(qmax, 1) / 4 + 0.5)))
        self.logit = nn.Parameter(torch.zeros(channels, mixtures))

    def _cdf(self, v):  # v: (N, K, H, W)
        shape = (1, -1, 1, 1, self.mean.shape[1])
        mu, s, w = self.mean.view(shape), self.log_scale.exp().view(shape), F.softmax(self.logit, -1).view(shape)
        return (w * torch.sigmoid((v.unsqueeze(-1) - mu) / s)).sum(-1)

    def likelihood(self, v):
        lower = torch.where(v < 0.5, torch.zeros_like(v), self._cdf(v - 0.5))
        upper = torch.where(v > self.qmax - 0.5, torch.ones_like(v), self._cdf(v + 0.5))
        return (upper - lower).clamp_min(1e-9)

    def bits(self, v):
        """-log2 of the likelihood of every element of v (N, K, H, W)."""
        return -torch.log2(self.likelihood(v))


class Bottleneck(nn.Module):
    """encoder -> quantize (straight-through) -> decoder; `density` models the codes for the rate."""

    def __init__(self, cfg: BottleneckConfig, cin: int, size: tuple[int, int] | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "linear":
            self.encoder = LinearEncoder(cin, cfg.channels, cfg.stride)
            self.decoder = LinearDecoder(cfg.channels, cin, cfg.stride)
        else:
            self.encoder = Encoder(cin, cfg.channels, cfg.stride, cfg.hidden)
            self.decoder = Decoder(cfg.channels, cin, cfg.stride, cfg.dec_hidden)
        self.density = CodeDensity(cfg.channels, cfg.qmax, cfg.mixtures)
        # the per-location mean of the cut tensor on normal frames (a fixed camera): subtracted before the
        # encoder, added after the decoder; zeros (no effect) without cfg.background
        bg = (1, cin, *size) if cfg.background and size else (1, cin, 1, 1)
        self.register_buffer("background", torch.zeros(bg))

    def latent(self, x, bg=None):
        return self.encoder(x - (self.background if bg is None else bg))

    def codes(self, x):
        """The integer codes (as float) the exported head sends: clamp(round(y), 0, qmax)."""
        return torch.clamp(torch.round(self.latent(x)), 0.0, float(self.cfg.qmax))

    def decode(self, codes_float, bg=None):
        return self.decoder(codes_float) + (self.background if bg is None else bg)

    def forward(self, x, bg=None):
        """(decoded cut tensor, rate bits per element of the codes, range penalty) at train time; `bg`: the
        background's crop matching x's (training on crops), else the whole background."""
        y = self.latent(x, bg)
        q = torch.clamp(torch.round(y), 0.0, float(self.cfg.qmax))
        y_ste = y + (q - y).detach()
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits = self.density.bits(noisy)
        out_of_range = (F.relu(y - self.cfg.qmax - 0.5) ** 2 + F.relu(-0.5 - y) ** 2).mean()
        return self.decode(y_ste, bg), bits, out_of_range


class Latent(nn.Module):
    """The end of a bottleneck head: cut tensor -> latent in code units (the quantizer follows)."""

    def __init__(self, model: Bottleneck):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.latent(x)


class Decode(nn.Module):
    """The start of a bottleneck tail (after the dequantizer): codes -> the cut tensor."""

    def __init__(self, model: Bottleneck):
        super().__init__()
        self.model = model

    def forward(self, codes_float):
        return self.model.decode(codes_float)


@torch.no_grad()
def pca_init(model: Bottleneck, sample: np.ndarray) -> dict:
    """Start a linear bottleneck as PCA: the encoder projects the (background-subtracted, pooled) cut tensor
    on its top K principal components, scaled so that +-p99.9 of each fills the code range around the
    middle code; the decoder maps codes back. `sample`: (N, C, H, W) cut activations of normal frames."""
    cfg = model.cfg
    x = torch.from_numpy(sample.astype(np.float32)) - model.background
    x = model.encoder.pool(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
    mean = flat.mean(0)
    cov = torch.cov((flat - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[: cfg.channels]
    v = evecs[:, order]  # (C, K)
    proj = (flat - mean) @ v
    half = 2 ** (cfg.bits - 1) - 0.5
    delta = torch.quantile(proj.abs()[:: max(1, len(proj) // 200000)], 0.999, dim=0) / half * cfg.step
    mid = float(2 ** (cfg.bits - 1))
    model.encoder.proj.weight.copy_((v / delta).T.float().view(cfg.channels, -1, 1, 1))
    model.encoder.proj.bias.copy_((mid - (mean @ v) / delta).float())
    w = (v * delta).T.float()  # (K, C)
    model.decoder.out.weight.copy_(w.view(cfg.channels, -1, 1, 1).expand(-1, -1, cfg.stride, cfg.stride))
    model.decoder.out.bias.copy_((mean - mid * (v * delta).sum(1)).float())
    return {"explained_variance": float(evals[order].sum() / evals.sum()), "step": delta.tolist()}


# ---------------------------------------------------------------------------------------------
# the cached teacher: activations at the cut and scored features, per video


def cut_and_tail(sp, cut_name: str):
    """(cut, head up to the cut (float input), frozen tail from the cut to the scored layer) of a Splitter."""
    from splitter.cuts import find_cut, split

    cut = find_cut(sp.stage_cuts, cut_name)
    head, tail = split(sp.model, cut, upto=sp.upto)
    for p in tail.parameters():
        p.requires_grad_(False)
    return cut, head.eval(), tail.eval()


class FeatureCache:
    """Per video, the float activations at the cut (float16) and the scored features (float16) of the
    frames given, computed once with torch and kept under `root` keyed by everything they depend on."""

    def __init__(self, sp, cut_name: str, root: Path):
        from splitter.cache import digest_files, digest_state

        self.sp, self.cut_name, self.root = sp, cut_name, Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.deps = {"model": sp.cfg.model, "weights": digest_state(sp.model), "size": list(sp.size),
                     "cut": cut_name, "upto": sp.upto,
                     "sources": digest_files(("splitter/models/mobilenet_v2.py", "splitter/graphs.py",
                                              "splitter/cuts.py", "edge/preprocess.py", "infocut/ped2.py"))}

    def _session(self):
        """image -> (cut activations, scored features) as one ONNX graph in onnxruntime (several times
        faster than torch's CPU depthwise convolutions)."""
        import onnxruntime as ort

        from splitter.onnxgraph import to_onnx

        _, head, tail = cut_and_tail(self.sp, self.cut_name)
        pre = self.sp.preprocess

        class Both(nn.Module):
            def __init__(self):
                super().__init__()
                self.head, self.tail = head, tail

            def forward(self, image):
                a = self.head(pre(image))
                return a, self.tail(a)

        frame = torch.zeros(1, *self.sp.size, 3, dtype=torch.uint8)
        graph = to_onnx(Both(), (frame,), ["image"], ["cut", "feat"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def key(self, split: str, vid: str, paths: list[Path]) -> Path:
        from splitter.cache import Cache, digest_frames

        k = Cache.key(**self.deps, split=split, video=vid, frames=digest_frames(paths))
        return self.root / f"{split}-{vid}-{k}.npz"

    @torch.no_grad()
    def get(self, split: str, videos: dict[str, list[Path]], desc: str = "teacher features") -> dict:
        """{video: (cut activations (T, C, H, W) f16, scored features (T, C', H', W') f16)}."""
        from splitter.features import load_frames, progress_bar

        out, todo = {}, {}
        for vid, paths in videos.items():
            path = self.key(split, vid, paths)
            if path.exists():
                with np.load(path, allow_pickle=False) as z:
                    out[vid] = (z["cut"], z["feat"])
            else:
                todo[vid] = paths
        if todo:
            sess = self._session()
            with progress_bar(transient=True) as bar:
                task = bar.add_task(f"{desc} ({split})", total=sum(len(v) for v in todo.values()))
                for vid, paths in todo.items():
                    cuts, feats = [], []
                    for i in range(0, len(paths), 4):
                        a, f = sess.run(None, {"image": load_frames(paths[i : i + 4], self.sp.size)})
                        cuts.append(a.astype(np.float16))
                        feats.append(f.astype(np.float16))
                        bar.advance(task, len(paths[i : i + 4]))
                    c, f = np.concatenate(cuts), np.concatenate(feats)
                    path = self.key(split, vid, paths)
                    tmp = path.with_suffix(".tmp.npz")
                    np.savez(tmp, cut=c, feat=f)
                    tmp.replace(path)
                    out[vid] = (c, f)
        return out


# ---------------------------------------------------------------------------------------------
# training


def feature_stats(train: dict, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel std of the scored features and of their change over `gap` frames (normal videos)."""
    s = s2 = d = d2 = 0.0
    n = nd = 0
    for _, feat in train.values():
        f = torch.from_numpy(feat[::2].astype(np.float32))
        s, s2, n = s + f.sum((0, 2, 3)), s2 + (f**2).sum((0, 2, 3)), n + f[:, 0].numel()
        full = torch.from_numpy(feat.astype(np.float32))
        delta = full[gap:] - full[:-gap]
        d, d2, nd = d + delta.sum((0, 2, 3)), d2 + (delta**2).sum((0, 2, 3)), nd + delta[:, 0].numel()
    std = (s2 / n - (s / n) ** 2).clamp_min(1e-8).sqrt()
    dstd = (d2 / nd - (d / nd) ** 2).clamp_min(1e-8).sqrt()
    return std, dstd


def train(cfg: BottleneckConfig, tail: nn.Module, train_data: dict, progress=None, log=None) -> tuple[Bottleneck, dict]:
    """Distil a bottleneck on cached (cut activations, scored features) of normal videos. Deterministic
    for a seed (single process, fixed crop and noise draws). Returns the module and a training log."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vids = [v for v in train_data if len(train_data[v][0]) > cfg.gap]
    cin, h, w = train_data[vids[0]][0].shape[1:]
    fh, fw = train_data[vids[0]][1].shape[2:]
    if (fh, fw) != (h, w):
        raise ValueError(f"the tail changes the resolution ({h}x{w} -> {fh}x{fw}): crops need a stride-1 tail")
    std, dstd = feature_stats(train_data, cfg.gap)
    inv_var, inv_dvar = (1 / std**2).view(1, -1, 1, 1), (1 / dstd**2).view(1, -1, 1, 1)
    if cfg.pretrain_steps:
        cstd, cdstd = feature_stats({v: (None, c) for v, (c, _) in train_data.items()}, cfg.gap)
        cut_inv_var, cut_inv_dvar = (1 / cstd**2).view(1, -1, 1, 1), (1 / cdstd**2).view(1, -1, 1, 1)
    total = cfg.pretrain_steps + cfg.steps
    model = Bottleneck(cfg, cin, (h, w))
    init_info = {}
    with torch.no_grad():
        if cfg.background:
            total_n = sum(len(train_data[v][0]) for v in vids)
            bg = sum(train_data[v][0].astype(np.float32).sum(0) for v in vids) / total_n
            model.background.copy_(torch.from_numpy(bg)[None])
        sample = np.concatenate([train_data[v][0][:: max(1, len(train_data[v][0]) // 8)] for v in vids])
        if cfg.init == "pca":
            init_info = pca_init(model, sample)
        else:  # start from the mean cut tensor and mid-range codes
            mean = sample.astype(np.float32).mean((0, 2, 3)) - model.background.mean((0, 2, 3)).numpy()
            model.decoder.out.bias.copy_(torch.from_numpy(mean))
            model.encoder.proj.bias.fill_(cfg.qmax / 2)
        del sample
    # the density must follow the codes within a few hundred steps: it learns 10x faster than the networks
    dens = list(model.density.parameters())
    nets = [p for n, p in model.named_parameters() if not n.startswith("density.")]
    opt = torch.optim.Adam([{"params": nets, "lr": cfg.lr}, {"params": dens, "lr": 10 * cfg.lr}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, 10 * cfg.lr], total_steps=max(total, 10),
                                                pct_start=min(0.5, max(0.1, 2.5 / max(total, 10))))
    crop, margin = min(cfg.crop, h, w) // 2 * 2, 4
    area_scale = (h * w) / (crop * crop) / 8 / 1000  # crop bits -> kB per full frame
    history = []
    t0 = time.perf_counter()
    task = progress.add_task(f"train K={cfg.channels} s={cfg.stride} B={cfg.bits} lambda={cfg.lam:g}",
                             total=total) if progress is not None else None
    for step in range(total):
        pre = step < cfg.pretrain_steps
        xs, ts, bgs = [], [], []
        for _ in range(cfg.batch):
            v = vids[rng.integers(len(vids))]
            cut, feat = train_data[v]
            t = int(rng.integers(len(cut) - cfg.gap))
            y0, x0 = int(rng.integers(0, h - crop + 1)) // 2 * 2, int(rng.integers(0, w - crop + 1)) // 2 * 2
            bgc = model.background[0, :, y0 : y0 + crop, x0 : x0 + crop] if cfg.background else model.background[0]
            for tt in (t, t + cfg.gap):
                bgs.append(bgc)
                xs.append(cut[tt, :, y0 : y0 + crop, x0 : x0 + crop])
                ts.append(feat[tt, :, y0 : y0 + crop, x0 : x0 + crop])
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        dec, bits, oor = model(x, torch.stack(bgs))
        if pre:  # reconstruct the cut tensor (and its change)
            err = (dec - x)[..., margin:-margin, margin:-margin]
            iv, idv = cut_inv_var, cut_inv_dvar
        else:
            target = torch.from_numpy(np.stack(ts).astype(np.float32))[..., margin:-margin, margin:-margin]
            err = tail(dec)[..., margin:-margin, margin:-margin] - target
            iv, idv = inv_var, inv_dvar
        d_feat = (err**2 * iv).mean()
        d_motion = ((err[1::2] - err[0::2]) ** 2 * idv).mean()
        dist = d_feat + cfg.motion_weight * d_motion
        rate_kb = bits.sum() / len(x) * area_scale
        loss = dist + cfg.lam * rate_kb + 10.0 * oor
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "d_feat": d_feat.item(), "d_motion": d_motion.item(),
                        "rate_kb": rate_kb.item(), "loss": loss.item()})
        if task is not None:
            progress.update(task, advance=1, description=(
                f"train K={cfg.channels} s={cfg.stride} B={cfg.bits} lambda={cfg.lam:g}: D {dist.item():.3f} "
                f"R {rate_kb.item():.2f} kB"))
        if log is not None and (step % 50 == 0 or step == total - 1):
            log(f"step {step}: D_feat {d_feat.item():.4f} D_motion {d_motion.item():.4f} R {rate_kb.item():.3f} kB")
    if task is not None:
        progress.remove_task(task)
    tail_avg = history[-max(1, total // 10):]
    info = {"seconds": time.perf_counter() - t0, "init": init_info,
            "final": {k: float(np.mean([hh[k] for hh in tail_avg])) if tail_avg else None
                      for k in ("d_feat", "d_motion", "rate_kb", "loss")},
            "loss": "mean((s-t)^2/var_t) + motion_weight * mean((ds-dt)^2/var_dt) + lambda * rate_kB_per_frame "
                    "(+10 * out-of-range penalty); s, t: student and teacher scored features on crops, d: change "
                    "over gap frames; rate from the learned factorized density on latent + U(-0.5, 0.5)"}
    return model.eval(), info


# ---------------------------------------------------------------------------------------------
# codes, their rate, the decoded features


@torch.no_grad()
def encode_all(model: Bottleneck, data: dict, batch: int = 16) -> dict[str, np.ndarray]:
    return {v: np.concatenate([model.codes(torch.from_numpy(c[i : i + batch].astype(np.float32))).to(torch.uint8).numpy()
                               for i in range(0, len(c), batch)]) for v, (c, _) in data.items()}


def code_tables(codes: dict[str, np.ndarray], bits: int, prior: float = 0.5) -> np.ndarray:
    """Per-channel probability tables (K, 2^B) of the codes of the calibration (training) frames,
    add-`prior` smoothed: what a static per-channel ANS coder is given."""
    k = next(iter(codes.values())).shape[1]
    counts = np.full((k, 2**bits), prior, np.float64)
    for c in codes.values():
        flat = c.transpose(1, 0, 2, 3).reshape(k, -1)
        for ch in range(k):
            counts[ch] += np.bincount(flat[ch], minlength=2**bits)[: 2**bits]
    return counts / counts.sum(1, keepdims=True)


def factorized_bytes(codes: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Per frame, the bytes of the codes (T, K, H, W) under per-channel tables: the bound a static
    per-channel entropy coder reaches (within its table precision and a few bytes of flushing)."""
    logp = -np.log2(tables)
    k = codes.shape[1]
    bits = np.zeros(len(codes))
    for ch in range(k):
        bits += logp[ch][codes[:, ch]].reshape(len(codes), -1).sum(1)
    return bits / 8


def empirical_entropy_bytes(codes: np.ndarray, bits: int) -> float:
    """The per-channel empirical entropy of the codes themselves, in bytes per frame (the plug-in bound)."""
    t = code_tables({"x": codes}, bits, prior=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(t > 0, t * np.log2(t), 0.0), 1)
    return float(h.sum() * math.prod(codes.shape[2:]) / 8)


def zstd_bytes(codes: np.ndarray, bits: int) -> np.ndarray:
    """codec.encode_frame (framing included) of every frame's codes with zstd, as the edge sends them."""
    from codec import encode_frame

    return np.array([len(encode_frame([codes[i : i + 1]], bits, "zstd")) for i in range(len(codes))])


# ---------------------------------------------------------------------------------------------
# pruning


@dataclass
class PruneResult:
    keep: list[int]  # kept channel indices, ascending
    fill: np.ndarray  # (C,) the value of every channel in the tail when dropped (its mean)
    qparams: object  # codec.QuantParams of the kept channels
    entropy_bits: list[float]  # per channel of the cut, the code entropy on the calibration frames


def prune_channels(calib: np.ndarray, n_keep: int, bits: int, percentile: float = 99.99) -> PruneResult:
    """Keep the `n_keep` channels of highest code entropy at `bits` (per-channel quantizer calibrated on
    `calib`, (N, C, H, W) float activations at the cut); the rest are filled with their mean."""
    import codec

    c = calib.shape[1]
    if not 1 <= n_keep <= c:
        raise ValueError(f"keep 1..{c} channels, got {n_keep}")
    q = codec.calibrate(calib, bits, per_channel=True, percentile=percentile)
    codes = codec.quantize(calib, q)
    ent = []
    for ch in range(c):
        p = np.bincount(codes[:, ch].ravel(), minlength=2**bits) / codes[:, ch].size
        p = p[p > 0]
        ent.append(float(-(p * np.log2(p)).sum()))
    keep = sorted(np.argsort(ent, kind="stable")[::-1][:n_keep].tolist())
    qk = codec.QuantParams(bits=bits, scale=q.scale[keep], zero_point=q.zero_point[keep], axis=1)
    return PruneResult(keep, calib.mean((0, 2, 3)).astype(np.float32), qk, ent)


class Select(nn.Module):
    """The kept channels of the cut tensor (end of the pruned head, before its quantizer)."""

    def __init__(self, keep: list[int]):
        super().__init__()
        self.register_buffer("index", torch.tensor(keep, dtype=torch.long))

    def forward(self, x):
        return torch.index_select(x, 1, self.index)


class Fill(nn.Module):
    """The kept channels back into a full cut tensor, every dropped channel at its fill value."""

    def __init__(self, keep: list[int], fill: np.ndarray):
        super().__init__()
        c = len(fill)
        scatter = torch.zeros(c, len(keep))
        scatter[keep, torch.arange(len(keep))] = 1.0
        mask = torch.ones(c)
        mask[keep] = 0.0
        self.register_buffer("scatter", scatter.view(c, len(keep), 1, 1))
        self.register_buffer("base", (torch.from_numpy(np.asarray(fill, np.float32)) * mask).view(1, c, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.scatter) + self.base


# ---------------------------------------------------------------------------------------------
# saving


def save(model: Bottleneck, path: Path, meta: dict) -> str:
    """Weights as safetensors (with the config and `meta` as JSON metadata); returns the file's sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(asdict(model.cfg)), "meta": json.dumps(meta, default=str)})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path, cin: int) -> tuple[Bottleneck, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    cfg = BottleneckConfig(**json.loads(md["config"]))
    state = load_file(str(path))
    state.setdefault("background", torch.zeros(1, cin, 1, 1))  # weights saved before the background map existed
    model = Bottleneck(cfg, cin, tuple(state["background"].shape[2:]))
    model.load_state_dict(state)
    return model.eval(), json.loads(md.get("meta", "{}"))


def onnx_session(module: nn.Module, example: torch.Tensor, threads: int = 2):
    """A torch module as an onnxruntime session with a dynamic batch axis ("x" -> "y")."""
    import onnxruntime as ort

    from splitter.onnxgraph import to_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    graph = to_onnx(module, (example,), ["x"], ["y"])
    return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def fit_scorer_on_cache(module: nn.Module, fit: dict, cfg, batch: int = 8):
    """The k-NN motion scorer fitted (splitter.scorer.ScorerFit, as Splitter.scorer) on module(cut activations)
    of the cached fit videos; module: float cut tensor -> scored features (e.g. decoder path + tail), run
    in onnxruntime."""
    from splitter.scorer import ScorerFit

    c0 = next(iter(fit.values()))[0]
    sess = onnx_session(module, torch.zeros(1, *c0.shape[1:]))
    fitter = ScorerFit(gap=cfg.gap)
    for c, _ in fit.values():
        fitter.add_video(np.concatenate([sess.run(None, {"x": c[i : i + batch].astype(np.float32)})[0]
                                         for i in range(0, len(c), batch)]))
    return fitter.build(cfg.bank_size, cfg.topk).eval()


class Coded(nn.Module):
    """cut tensor -> encoder -> clamp(round) -> decoder: what the tail decodes from the head's codes."""

    def __init__(self, model: Bottleneck):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.decode(self.model.codes(x))


# ---------------------------------------------------------------------------------------------
# export: an artifact like any other


def unit_qparams(k: int, bits: int):
    """The quantizer ending a bottleneck head: scale 1, zero point 0 (the encoder outputs code units)."""
    import codec

    return codec.QuantParams(bits=bits, scale=np.ones(k, np.float32), zero_point=np.zeros(k, np.float32), axis=1)


def _splitter_class():
    from splitter.export import Splitter
    from splitter.graphs import AnomalyTailGraph, ClassifierTailGraph, Dequantize, HeadGraph, Quantize

    class BottleneckSplitter(Splitter):
        """A Splitter whose head ends in the bottleneck's encoder and whose tail starts with its decoder;
        the scorer is fitted on the features decoded from the codes (through the bottleneck)."""

        def __init__(self, cfg, model: Bottleneck, weights: Path | None = None, meta: dict | None = None,
                     quiet: bool = False, fit_cache: dict | None = None):
            super().__init__(cfg, quiet)
            self.bottleneck, self.weights, self.meta = model.eval(), weights, meta or {}
            self.q = unit_qparams(model.cfg.channels, model.cfg.bits)
            self.fit_cache = fit_cache  # FeatureCache.get("fit", ...): fit the scorer from it (onnxruntime)
            self._out = None

        def scorer(self):
            if self._scorer is None and self.fit_cache is not None:
                _, _, tail = self._parts()
                self._scorer = fit_scorer_on_cache(nn.Sequential(Coded(self.bottleneck), tail), self.fit_cache,
                                                   self.cfg)
            return super().scorer()

        def export(self, out, *args, **kw):
            self._out = Path(out)
            return super().export(out, *args, **kw)

        @torch.no_grad()
        def heldout_codes(self, head_g):
            """Splitter.heldout_codes with the written head.onnx in onnxruntime (the costly part)."""
            if self._out is None or not (self._out / "head.onnx").exists():
                return super().heldout_codes(head_g)
            import onnxruntime as ort

            from splitter.features import load_frames

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            head = ort.InferenceSession(str(self._out / "head.onnx"), opts, providers=["CPUExecutionProvider"])
            return [(np.concatenate([head.run(None, {"image": load_frames(paths[i : i + 4], self.size)})[0]
                                     for i in range(0, len(paths), 4)]),)
                    for paths in self.training_videos(True).values()]

        def _parts(self):
            from splitter.cuts import find_cut, split

            cut = find_cut(self.cuts, self.bottleneck.cfg.cut)
            head, tail = split(self.model, cut, upto=self.upto)
            return cut, head, tail

        def scorer_net(self) -> nn.Module:
            _, head, tail = self._parts()
            bneck = self.bottleneck

            class Through(nn.Module):
                def __init__(self, pre):
                    super().__init__()
                    self.pre, self.head, self.bneck, self.tail = pre, head, bneck, tail

                def forward(self, image):
                    x = self.head(self.pre(image))
                    return self.tail(self.bneck.decode(self.bneck.codes(x)))

            return Through(self.preprocess).eval()

        def calibrate(self, cut, bits):
            return [self.q]

        def graphs(self, cut, qs):
            if cut.name != self.bottleneck.cfg.cut:
                raise ValueError(f"this bottleneck sits at {self.bottleneck.cfg.cut}, not {cut.name}")
            _, head, tail = self._parts()
            head_g = HeadGraph(self.preprocess, nn.Sequential(head, Latent(self.bottleneck)), [Quantize(self.q)]).eval()
            tail_net = nn.Sequential(Decode(self.bottleneck), tail)
            if self.cfg.task == "classify":
                return head_g, ClassifierTailGraph([Dequantize(self.q)], tail_net).eval()
            return head_g, AnomalyTailGraph([Dequantize(self.q)], tail_net, self.scorer()).eval()

        def manifest_extra(self, cut) -> dict:
            c = self.bottleneck.cfg
            return {"bottleneck": {
                "kind": "learned", "cut": c.cut, "channels": c.channels, "stride": c.stride, "bits": c.bits,
                "lambda": c.lam, "config": asdict(c),
                "weights_sha256": hashlib.sha256(Path(self.weights).read_bytes()).hexdigest() if self.weights else None,
                "training_data": self.meta.get("train_data"), "loss": self.meta.get("loss"),
                "head": "preprocess, the model to the cut, [minus the background map], encoder (conv: conv3x3 "
                        "stride s, ReLU, conv1x1 to K; linear: avgpool s, conv1x1 to K), quantizer clamp(round(y), 0, "
                        "2^B-1) (scale 1, zero point 0)",
                "tail": "dequantizer (scale 1, zero point 0), decoder (conv: conv1x1, PixelShuffle if s=2, ReLU, "
                        "conv3x3, ReLU, conv3x3; linear: transposed conv s x s) [plus the background map], the frozen "
                        "model from the cut to the scored layer, the scorer fitted on the decoded features of the "
                        "normal fit videos",
            }}

    return BottleneckSplitter


def bottleneck_splitter(cfg, model: Bottleneck, weights: Path | None = None, meta: dict | None = None,
                        quiet: bool = False, fit_cache: dict | None = None):
    return _splitter_class()(cfg, model, weights, meta, quiet, fit_cache)


def _prune_class():
    from splitter.export import Splitter
    from splitter.graphs import AnomalyTailGraph, Dequantize, HeadGraph, Quantize

    class PruneSplitter(Splitter):
        """A Splitter whose head sends only the kept channels of the cut, the tail filling the rest."""

        def __init__(self, cfg, n_keep: int, quiet: bool = False):
            super().__init__(cfg, quiet)
            self.n_keep, self.pruned = n_keep, {}

        def prune(self, cut, bits) -> PruneResult:
            if (cut.name, bits) not in self.pruned:
                acts = self.activations(cut)
                if len(acts) != 1:
                    raise ValueError(f"pruning needs a single-tensor cut, {cut.name} carries {len(acts)}")
                self.pruned[cut.name, bits] = prune_channels(acts[0], self.n_keep, bits, self.cfg.percentile)
            return self.pruned[cut.name, bits]

        def calibrate(self, cut, bits):
            return [self.prune(cut, bits).qparams]

        def _pruned_parts(self, cut, qs):
            from splitter.cuts import split

            pr = next(p for (name, _), p in self.pruned.items() if name == cut.name and p.qparams == qs[0])
            head, tail = split(self.model, cut, upto=self.upto)
            return pr, head, tail

        def scorer_net(self) -> nn.Module:
            cut, bits = self._current
            pr = self.prune(cut, bits)
            head, tail = __import__("splitter.cuts", fromlist=["split"]).split(self.model, cut, upto=self.upto)
            return nn.Sequential(self.preprocess, head, Select(pr.keep), Quantize(pr.qparams),
                                 Dequantize(pr.qparams), Fill(pr.keep, pr.fill), tail).eval()

        def graphs(self, cut, qs):
            pr, head, tail = self._pruned_parts(cut, qs)
            self._current = (cut, pr.qparams.bits)
            head_g = HeadGraph(self.preprocess, nn.Sequential(head, Select(pr.keep)), [Quantize(pr.qparams)]).eval()
            tail_net = nn.Sequential(Fill(pr.keep, pr.fill), tail)
            return head_g, AnomalyTailGraph([Dequantize(pr.qparams)], tail_net, self.scorer()).eval()

        def manifest_extra(self, cut) -> dict:
            pr = next(p for (name, _), p in self.pruned.items() if name == cut.name)
            return {"pruning": {"kind": "entropy", "cut": cut.name, "kept": len(pr.keep), "of": len(pr.fill),
                                "kept_channels": pr.keep, "fill": pr.fill.tolist(),
                                "rule": "keep the channels of highest code entropy on the calibration frames; the "
                                        "tail fills every dropped channel with its calibration mean"}}

    return PruneSplitter


def prune_splitter(cfg, n_keep: int, quiet: bool = False):
    return _prune_class()(cfg, n_keep, quiet)
