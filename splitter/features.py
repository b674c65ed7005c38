"""Run (part of) a model over Ped2 videos, in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infocut.ped2 import read_rgb


def progress_bar(**kw) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), **kw
    )


def load_frames(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    return np.stack([read_rgb(p, size) for p in paths])


@torch.no_grad()
def run_videos(
    fn, videos: dict[str, list[Path]], size: tuple[int, int], desc: str, batch: int = 16, quiet: bool = False,
    bar: Progress | None = None,
) -> Iterable[tuple[str, np.ndarray]]:
    """Yield (video id, fn applied to its uint8 NHWC frames) video by video, batch by batch. An `fn` that
    returns a tuple of tensors (the head of a multi-tensor cut) yields a tuple of arrays. `bar`: a live
    progress display to add this pass's bar to (rich allows one live display at a time), else its own."""
    total = sum(len(v) for v in videos.values())
    with nullcontext(bar) if bar is not None else progress_bar(disable=quiet, transient=True) as bar:
        task = bar.add_task(desc, total=total)
        try:
            yield from _run(fn, videos, size, batch, bar, task)
        finally:
            bar.remove_task(task)


def _run(fn, videos, size, batch, bar, task):
    for vid, paths in videos.items():
        outs = []
        for i in range(0, len(paths), batch):
            frames = torch.from_numpy(load_frames(paths[i : i + batch], size))
            out = fn(frames)
            outs.append(tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy())
            bar.advance(task, len(frames))
        multi = isinstance(outs[0], tuple)
        yield vid, tuple(np.concatenate(o) for o in zip(*outs)) if multi else np.concatenate(outs)
