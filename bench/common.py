"""What the benchmarks share: code revision, machine, progress bars, plot styling; frame-level AUROC with a
bootstrap interval (splitter.metrics, re-exported)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from splitter.metrics import Bootstrap, auroc  # noqa: F401  (they live in splitter/ now: the analysis uses them too)

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


def plot_style() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "legend.fontsize": 8, "font.size": 9, "savefig.dpi": 120,
    })
