"""Frame-level AUROC and its paired bootstrap: shared by the splitter's analysis and bench/.

numpy + scipy only (no torch), so bench/ can import it without loading the model stack.
"""

from __future__ import annotations

import numpy as np


def _auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of (R, N) labels/scores (Mann-Whitney U with average ranks for ties,
    which is what sklearn's roc_auc_score computes)."""
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    ranks = rankdata(scores, axis=-1)
    pos = labels.sum(-1)
    neg = labels.shape[-1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * labels).sum(-1) - pos * (pos + 1) / 2) / (pos * neg)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        raise ValueError("AUROC needs both normal and anomalous frames")
    return float(_auroc_rows(labels[None], np.asarray(scores, np.float64)[None])[0])


class Bootstrap:
    """Frame-level AUROC with a percentile bootstrap interval: frames resampled with replacement.

    The same `draws` resamples (seeded) serve every method, so intervals of differences between
    methods on the same frames are paired.
    """

    def __init__(self, labels: np.ndarray, draws: int = 1000, seed: int = 0, level: float = 0.95):
        self.labels = np.asarray(labels, bool)
        self.draws, self.seed, self.level = draws, seed, level
        rng = np.random.default_rng(seed)
        self.idx = rng.integers(0, len(self.labels), size=(draws, len(self.labels)))
        y = self.labels[self.idx]
        self._ok = y.any(1) & ~y.all(1)  # a resample with a single class has no AUROC
        self._y = y[self._ok]

    def samples(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, np.float64)[self.idx[self._ok]]
        return _auroc_rows(self._y, s)

    def interval(self, samples: np.ndarray) -> tuple[float, float]:
        a = (1 - self.level) / 2 * 100
        lo, hi = np.percentile(samples, [a, 100 - a])
        return float(lo), float(hi)

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile bootstrap over frames: {self.draws} resamples of all scored test frames "
                f"with replacement (numpy default_rng seed {self.seed}), shared by every row (paired)")
