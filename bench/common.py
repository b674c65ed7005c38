"""What the benchmarks share: code revision, machine, progress bars, frame-level AUROC with a
bootstrap interval, plot styling."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# One colour per family of methods, the same in every plot.
COLORS = {
    "unsplit": "black",
    "h264": "tab:red",
    "h265": "tab:purple",
    "jpeg": "tab:brown",
    "webp": "tab:olive",
    "split": "tab:blue",
}


def git_revision() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine_info(ort_threads: int = 0) -> dict:
    import onnxruntime as ort
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_threads": ort_threads or "default (intra_op_num_threads=0: onnxruntime picks, one per physical core)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def progress(console=None, width: int = 28):
    """A rich progress bar: description, bar, done/total, elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console)


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


def plot_style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "legend.fontsize": 8, "font.size": 9, "savefig.dpi": 120,
    })
