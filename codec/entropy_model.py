"""Entropy models: the integer probability tables an ANS coder codes the cut's codes against.

A table row is integer frequencies that sum to exactly 2**PRECISION with every symbol at least 1,
fitted on normal training video at export and stored in the manifest. Encoder and decoder build the
same coder state from the same integers, so decoding is bit exact on every machine.

- ``intra`` (C, S): each channel's marginal; the factorized model a key frame is coded with.
- ``inter`` (C, S, S) or None: row [c, p] is channel c's distribution given that the same position
  held code p in the reference frame (the previous frame sent). A fixed camera's scene repeats
  itself, so most codes equal their predecessor's and this row is sharply peaked.

A delta frame is coded with tables derived from these (``delta_tables``), in integer arithmetic so
that both sides derive the same ones: per channel the gaps between changed positions (geometric in
the channel's probability of a code repeating) and, per (channel, reference code), the new code of a
position that changed (the inter row without its diagonal).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from codec.errors import CodecError
from codec.quantizer import check_bits

PRECISION = 16  # frequencies sum to 2**16; constriction's ANS keeps 24 bits, so they are represented exactly
MAX_INTER_BITS = 4  # a (C, S, S) table stays small (S <= 16); deeper codes are coded intra only
PRIOR_WEIGHT = 4.0  # pseudo-counts of the channel's marginal mixed into each context row (rare contexts)
GAP_ESCAPE = 64  # a delta frame's gap symbols: 0..63 unchanged codes then a change; 64: 64 unchanged, go on


@dataclass(frozen=True)
class EntropyModel:
    """Integer tables of one cut tensor (read-only uint32 arrays)."""

    bits: int
    intra: np.ndarray
    inter: np.ndarray | None = None

    def __post_init__(self) -> None:
        bits = check_bits(self.bits)
        s = 1 << bits
        intra = _table(self.intra, "intra")
        if intra.ndim != 2 or intra.shape[1] != s:
            raise CodecError(f"intra table must be (channels, {s}) at {bits} bits, got {intra.shape}")
        inter = None
        if self.inter is not None:
            inter = _table(self.inter, "inter")
            if inter.shape != (intra.shape[0], s, s):
                raise CodecError(f"inter table must be {(intra.shape[0], s, s)}, got {inter.shape}")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "intra", intra)
        object.__setattr__(self, "inter", inter)

    @property
    def channels(self) -> int:
        return self.intra.shape[0]

    def to_json(self) -> dict:
        out = {"bits": self.bits, "precision": PRECISION, "intra": self.intra.tolist()}
        if self.inter is not None:
            out["inter"] = self.inter.tolist()
        return out

    @classmethod
    def from_json(cls, obj: dict) -> EntropyModel:
        if not isinstance(obj, dict) or "intra" not in obj or "bits" not in obj:
            raise CodecError("an entropy model needs 'bits' and 'intra'")
        if obj.get("precision") != PRECISION:
            raise CodecError(f"entropy model precision {obj.get('precision')!r}, this build codes at {PRECISION}")
        return cls(obj["bits"], _array(obj["intra"]), None if obj.get("inter") is None else _array(obj["inter"]))

    def cost_bits(self, codes: np.ndarray) -> float:
        """-log2 P(codes) under the intra tables: the ideal size of a key frame's payload."""
        x = channel_rows(codes, self.channels)
        return float(PRECISION * x.size - np.log2(self.intra[np.arange(self.channels)[:, None], x]).sum())

    @functools.cached_property
    def delta_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(gap (C, GAP_ESCAPE + 1), change (C, S, S - 1)): what a delta frame is coded with, derived from
        the tables in exact integer arithmetic (float sums may round differently on another machine).

        gap[c]: channel c's run of unchanged codes before the next change is k < GAP_ESCAPE with
        probability (1 - q) q^k, and the escape (GAP_ESCAPE unchanged, the run goes on) q^GAP_ESCAPE, where
        q is the probability that a code repeats, the inter table's diagonal weighted by the marginal.
        change[c, p]: the new code of a position that held p and changed, inter[c, p] without p (symbol j
        stands for code j, or j + 1 from p on). One q per channel, not per reference code, costs ~1.5%
        of a delta frame on Ped2 and lets an unchanged code cost no coder step (it is in a run)."""
        if self.inter is None:
            raise CodecError("this entropy model has no inter table")
        total, g = 1 << PRECISION, GAP_ESCAPE
        c, s = self.intra.shape
        gap = np.empty((c, g + 1), np.uint32)
        change = np.empty((c, s, max(s - 1, 1)), np.uint32)
        for ch in range(c):
            intra, inter = self.intra[ch].tolist(), self.inter[ch].tolist()
            q = sum(intra[p] * inter[p][p] for p in range(s)) >> PRECISION  # q * 2**16, rounded down
            q = min(max(q, 1), total - 1)
            gap[ch] = quantize_weights([(total - q) * q**k * total ** (g - 1 - k) for k in range(g)] + [q**g])
            for p in range(s):
                change[ch, p] = quantize_weights([f for x, f in enumerate(inter[p]) if x != p] or [1])
        for t in (gap, change):
            t.flags.writeable = False
        return gap, change


def channel_rows(codes: np.ndarray, channels: int, dtype=np.int64) -> np.ndarray:
    """Codes of one frame, (1, C, ...) or (C, ...), as (C, positions) rows of `dtype` (no copy when it is theirs)."""
    a = np.asarray(codes)
    if a.ndim >= 2 and a.shape[0] == 1 and a.shape[1] == channels:
        a = a[0]
    if a.ndim < 1 or a.shape[0] != channels:
        raise CodecError(f"codes of shape {np.shape(codes)} do not have the model's {channels} channels on axis 1")
    return a.reshape(channels, -1).astype(dtype, copy=False)


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """Rows of nonnegative counts -> uint32 frequencies, each row summing to 2**PRECISION, each entry >= 1.

    Each symbol gets 1 plus its share of the rest, rounded down; the few units left go to the largest
    remainders (ties to the lower symbol), so the result is a deterministic function of the counts."""
    c = np.asarray(counts, dtype=np.float64)
    s = c.shape[-1]
    total = 1 << PRECISION
    if s > total // 2:
        raise CodecError(f"{s} symbols do not fit a {PRECISION}-bit table")
    sums = c.sum(-1, keepdims=True)
    p = np.where(sums > 0, c / np.where(sums > 0, sums, 1), 1.0 / s)
    share = p * (total - s)
    freq = 1 + np.floor(share)
    left = (total - freq.sum(-1)).astype(np.int64)
    order = np.argsort(-(share - np.floor(share)), axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(s).reshape((1,) * (c.ndim - 1) + (s,)), axis=-1)
    freq += ranks < left[..., None]
    out = freq.astype(np.uint32)
    assert (out.sum(-1) == total).all()
    return out


def quantize_weights(weights: list[int]) -> list[int]:
    """Nonnegative integer weights -> frequencies summing to 2**PRECISION, each at least 1, in exact integer
    arithmetic: 1 plus each one's share of the rest, rounded down, the units left to the largest remainders
    (ties to the lower symbol). Unlike quantize_counts (float counts, at export; its result is stored), this
    runs on both sides of a stream, which must agree to the bit."""
    total, s, w = 1 << PRECISION, len(weights), sum(weights)
    if s > total // 2 or min(weights, default=0) < 0:
        raise CodecError(f"{s} weights do not make a {PRECISION}-bit table")
    if w == 0:
        weights, w = [1] * s, s
    spare = total - s
    freq = [1 + x * spare // w for x in weights]
    for i in sorted(range(s), key=lambda i: -(weights[i] * spare % w))[: total - sum(freq)]:  # stable: ties low
        freq[i] += 1
    return freq


class Counts:
    """What `fit` counts, accumulated a piece at a time: codes of one video, or consecutive frames of one
    video given in pieces (`prev`: the frame just before the piece), so that a long pass over many
    cuts and bit depths never holds a whole video's codes. `model()` gives exactly fit's tables."""

    def __init__(self, bits: int, inter: bool | None = None):
        self.bits = check_bits(bits)
        self.inter = self.bits <= MAX_INTER_BITS if inter is None else bool(inter)
        self.marg: np.ndarray | None = None
        self.pair: np.ndarray | None = None

    def add(self, codes: np.ndarray, prev: np.ndarray | None = None) -> None:
        """codes: (frames, C, ...) uint8, consecutive frames in order; prev: (C, ...) the frame before them
        in the same video (None: the first frame starts a video, no pair ends on it)."""
        s = 1 << self.bits
        v = np.asarray(codes)
        if v.ndim < 2:
            raise CodecError(f"a video's codes need a frame and a channel axis, got shape {v.shape}")
        c = v.shape[1]
        if self.marg is None:
            self.marg = np.zeros((c, s), np.float64)
            self.pair = np.zeros((c, s * s), np.float64) if self.inter else None
        elif self.marg.shape[0] != c:
            raise CodecError(f"videos disagree on the channel count ({self.marg.shape[0]} vs {c})")
        x = np.moveaxis(v, 1, 0).reshape(c, v.shape[0], -1).astype(np.int64)  # (C, frames, positions)
        rows = np.arange(c)[:, None]
        # integer counts (bincount of channel * s + symbol): exact in float64, whatever the order of the pieces
        self.marg += np.bincount((rows * s + x.reshape(c, -1)).ravel(), minlength=c * s).reshape(c, s)
        if not self.inter:
            return
        if prev is not None:
            p = np.asarray(prev)
            if p.shape != v.shape[1:]:
                raise CodecError(f"the previous frame's codes are {p.shape}, the frames' {v.shape[1:]}")
            x = np.concatenate([p.reshape(c, 1, -1).astype(np.int64), x], axis=1)
        if x.shape[1] > 1:
            ctx = (x[:, :-1] * s + x[:, 1:]).reshape(c, -1)
            self.pair += np.bincount((rows * (s * s) + ctx).ravel(), minlength=c * s * s).reshape(c, s * s)

    def model(self) -> EntropyModel:
        if self.marg is None:
            raise CodecError("no codes to fit an entropy model on")
        intra = quantize_counts(self.marg)
        if not self.inter:
            return EntropyModel(self.bits, intra)
        s = 1 << self.bits
        prior = self.marg / self.marg.sum(-1, keepdims=True)
        pair = self.pair.reshape(-1, s, s) + PRIOR_WEIGHT * prior[:, None, :]
        return EntropyModel(self.bits, intra, quantize_counts(pair))


def fit(videos: Iterable[np.ndarray], bits: int, inter: bool | None = None) -> EntropyModel:
    """Fit the tables on codes of normal video: each item is one video's codes, (frames, C, ...) uint8,
    consecutive frames in order (the inter table learns what follows what). `inter`: fit the
    conditional table (default: when bits <= MAX_INTER_BITS)."""
    counts = Counts(bits, inter)
    for codes in videos:
        counts.add(codes)
    return counts.model()


def _array(value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as e:
        raise CodecError(f"entropy table is not a regular integer array ({e})") from None


def _table(value, what: str) -> np.ndarray:
    a = _array(value)
    total = 1 << PRECISION
    if a.size == 0 or a.min() < 1 or a.max() > total:
        raise CodecError(f"{what} table entries must be integers in 1..{total}")
    if (a.sum(-1) != total).any():
        raise CodecError(f"every {what} table row must sum to {total}")
    out = a.astype(np.uint32)
    out.flags.writeable = False
    return out
