"""The anomaly scorer exported at the end of tail.onnx: k-NN over appearance and motion.

Ped2's anomalies (bicycles, carts, skateboards) look much like walkers and differ mostly in how
fast they move, so each location is described by its feature vector and by that vector's change
since the camera's previous frame. One memory bank of normal (feature, change) patches is shared
by all locations (walkers pass any one spot too rarely for per-location models). A location's
anomaly is its distance to the nearest bank entry; a frame's score is the mean of its `topk`
most anomalous locations, so a small object is not averaged away by the empty walkway.

The change is taken over `gap` frames (at 10 fps a walker moves too little in one frame for the
change to tell speeds apart). The features `gap` frames back are state: the tail takes them as an
input and returns the current ones, and the cloud keeps the last `gap` per camera, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class MotionKnnScorer(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, bank: torch.Tensor, topk: int):
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1).float())
        self.register_buffer("inv_std", (1.0 / std).view(1, -1, 1, 1).float())
        self.register_buffer("bank_t", bank.t().contiguous().float())  # (D, M)
        self.register_buffer("bank_sq", (bank.float() ** 2).sum(1))  # (M,)
        self.topk = int(topk)

    def describe(self, feats: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        """(N, 2C, H, W) normalized (features, change); the change is 0 without a previous frame."""
        delta = (feats - prev) * has_prev.view(-1, 1, 1, 1)
        return (torch.cat([feats, delta], 1) - self.mean) * self.inv_std

    def forward(self, feats: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor):
        v = self.describe(feats, prev, has_prev)
        n, _, h, w = v.shape
        v = v.flatten(2).transpose(1, 2)  # (N, HW, D)
        d2 = (v * v).sum(-1, keepdim=True) - 2.0 * torch.matmul(v, self.bank_t) + self.bank_sq
        dist = torch.sqrt(torch.clamp(d2.min(-1).values, min=0.0))  # (N, HW)
        score = torch.topk(dist, self.topk, dim=1).values.mean(1)
        return score, dist.view(n, h, w)

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], topk: int) -> MotionKnnScorer:
        """The scorer whose buffers are `state` (its state_dict as arrays, e.g. a cached fit), bit for bit."""
        d, m = state["bank_t"].shape
        sc = cls(torch.zeros(d), torch.ones(d), torch.zeros(m, d), topk)
        sc.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        return sc.eval()

    @torch.no_grad()
    def frame_scores(self, feats: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        """The frame scores of forward() without the map, the nearest-neighbour search as one batched GEMM
        (baddbmm): the same math up to float rounding, about 2.5x faster on a CPU, for offline evaluation."""
        v = self.describe(feats, prev, has_prev).flatten(2).transpose(1, 2)  # (N, HW, D)
        n = v.shape[0]
        m = torch.baddbmm(self.bank_sq.expand(n, 1, -1), v, self.bank_t.expand(n, -1, -1), alpha=-2.0).amin(-1)
        dist = torch.sqrt(torch.clamp(m + (v * v).sum(-1), min=0.0))
        return torch.topk(dist, self.topk, dim=1).values.mean(1)


def lagged(feats: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's features `gap` frames back and whether that frame exists, as the cloud's history
    gives them for consecutive frames of one stream (the first `gap` frames have no motion)."""
    prev = torch.cat([feats[:gap], feats[:-gap]]) if len(feats) > gap else feats.clone()
    return prev, (torch.arange(len(feats)) >= gap).float()


@dataclass
class ScorerFit:
    """Streaming statistics of normal (feature, change) vectors and a random pool of them."""

    gap: int = 1
    pool_per_frame: int = 16
    seed: int = 0

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)
        self._sum = self._sq = None
        self._count = 0
        self._pool: list[np.ndarray] = []

    def add_video(self, feats: np.ndarray) -> None:
        """feats: (T, C, H, W) float32 features of consecutive frames of one normal video."""
        prev, has = (t.numpy() for t in lagged(torch.from_numpy(feats), self.gap))
        delta = (feats - prev) * has[:, None, None, None]
        v = np.concatenate([feats, delta], 1).transpose(0, 2, 3, 1).reshape(len(feats), -1, 2 * feats.shape[1])
        flat = v.reshape(-1, v.shape[-1]).astype(np.float64)
        self._sum = flat.sum(0) if self._sum is None else self._sum + flat.sum(0)
        self._sq = (flat**2).sum(0) if self._sq is None else self._sq + (flat**2).sum(0)
        self._count += len(flat)
        for frame in v:
            self._pool.append(frame[self._rng.choice(len(frame), self.pool_per_frame, replace=False)])

    def build(self, bank_size: int, topk: int) -> MotionKnnScorer:
        mean = self._sum / self._count
        std = np.sqrt(np.maximum(self._sq / self._count - mean**2, 0)) + 1e-3
        pool = (np.concatenate(self._pool) - mean) / std
        bank = coreset(pool.astype(np.float32), bank_size, seed=self.seed)
        return MotionKnnScorer(
            torch.from_numpy(mean.astype(np.float32)),
            torch.from_numpy(std.astype(np.float32)),
            torch.from_numpy(bank),
            topk,
        )


def coreset(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """Greedy k-center selection (as PatchCore): m rows of x that cover x's rare patterns too."""
    if m >= len(x):
        return x
    t = torch.from_numpy(x)
    chosen = [int(np.random.default_rng(seed).integers(len(x)))]
    dist = torch.cdist(t, t[chosen[0]][None]).squeeze(1)
    for _ in range(m - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(t, t[nxt][None]).squeeze(1))
    return x[np.sort(chosen)]
