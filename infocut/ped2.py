"""UCSD Ped2 as laid out in the shared folder: frame lists per video and frame-level labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infocut.settings import require_shared

ROOT = ("data", "ucsd_ped2")


def videos(split: str) -> dict[str, list[Path]]:
    """{video id: sorted frame paths} for split 'training' or 'testing'."""
    frames = require_shared(*ROOT, split, "frames")
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(frames.iterdir()) if d.is_dir()}


def labels() -> dict[str, np.ndarray]:
    """{video id: bool array, True on anomalous frames}; the file's ranges are 1-based inclusive."""
    spec = json.loads(require_shared(*ROOT, "testing", "labels.json").read_text())
    out = {}
    for vid, v in spec["videos"].items():
        y = np.zeros(v["frames"], dtype=bool)
        for start, end in v["anomalous"]:
            y[start - 1 : end] = True
        out[vid] = y
    return out


def read_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One frame as HxWx3 uint8 RGB, decoded and resized exactly as the edge does it."""
    from edge.preprocess import to_input
    from edge.source import read_image

    rgb = read_image(Path(path))
    if rgb is None:
        raise ValueError(f"cannot read image {path}")
    return to_input(rgb, size) if size else rgb
