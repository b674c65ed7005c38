"""A small on-disk cache for measurements: JSON and numpy arrays under the digest of what they depend on.

A value is stored as NAME-KEY.EXT, KEY the sha256 of its dependencies (weights, source files, config,
frames), with the dependencies themselves beside it (NAME-KEY.deps.json) so that a stale entry can be
told from a fresh one by reading it. Writes go to a temporary file first and are renamed into place,
so an interrupted run never leaves a half-written entry. Nothing is unpickled: arrays are read with
allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class Cache:
    """Arrays (.npy, .npz) and JSON on disk under a key: the sha256 of everything they depend on.
    A root of None caches nothing (every load misses, every save is dropped)."""

    def __init__(self, root: Path | str | None):
        self.root = None if root is None else Path(root)
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(**deps) -> str:
        return hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _path(self, name: str, key: str, ext: str) -> Path:
        return self.root / f"{name}-{key}.{ext}"

    def load(self, name: str, key: str, ext: str):
        if self.root is None or not self._path(name, key, ext).exists():
            return None
        path = self._path(name, key, ext)
        if ext == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return np.load(path, allow_pickle=False) if ext == "npy" else json.loads(path.read_text())

    def save(self, name: str, key: str, ext: str, value, deps: dict) -> None:
        if self.root is None:
            return
        path = self._path(name, key, ext)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        if ext in ("npy", "npz"):
            with open(tmp, "wb") as f:
                if ext == "npy":
                    np.save(f, value, allow_pickle=False)
                else:
                    np.savez(f, **value)
        else:
            tmp.write_text(json.dumps(value))
        tmp.replace(path)
        self._path(name, key, "deps.json").write_text(json.dumps(deps, indent=1, sort_keys=True, default=str))


def digest_files(paths, root: Path = REPO) -> str:
    """The files' names and bytes (paths relative to `root`): a source change invalidates what it computed."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        h.update((root / p).read_bytes())
    return h.hexdigest()[:24]


def digest_frames(paths: list[Path]) -> str:
    """The frame list by name and size (the frames are read-only data: no need to hash their bytes)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size};".encode())
    return h.hexdigest()[:24]


def digest_state(module) -> str:
    """A torch module's parameters and buffers by name and bytes: the weights, however they were loaded."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]
