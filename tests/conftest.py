"""Shared fixtures. Tests that need ../shared (Ped2, pretrained weights) skip with a clear message without it."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from infocut.settings import DEMO_ARTIFACT, shared_dir


def _has_shared() -> bool:
    return (shared_dir() / "data" / "ucsd_ped2").is_dir() and (shared_dir() / "models").is_dir()


needs_shared = pytest.mark.skipif(
    not _has_shared(),
    reason=f"needs the shared data/models folder at {shared_dir()} (set INFOCUT_SHARED to point at it)",
)


def skip_without_shared() -> None:
    if not _has_shared():
        pytest.skip(f"needs the shared data/models folder at {shared_dir()} (set INFOCUT_SHARED to point at it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_artifact():
    from infocut.artifact import load_artifact

    return load_artifact(DEMO_ARTIFACT)


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory) -> Path:
    """A quickly built ResNet-20 anomaly artifact at a late cut, 4 bits, ANS-coded with a key frame every 8
    frames and delta frames between (fitted on a few Ped2 videos): what the fault tests stream."""
    skip_without_shared()
    from splitter.export import SplitConfig, Splitter

    out = tmp_path_factory.mktemp("artifact")
    cfg = SplitConfig(cut="layer2_1", bits=4, coder="ans", key_interval=8, heldout=("16",), bank_size=256,
                      calib_stride=20)
    sp = Splitter(cfg, quiet=True)
    sp.training_videos = _fewer(sp.training_videos)
    sp.export(out)
    return out


def _fewer(fn):
    """Fit on 3 training videos only: enough for tests, seconds instead of a minute."""

    def wrapped(heldout: bool):
        vids = fn(heldout)
        return vids if heldout else dict(list(vids.items())[:3])

    return wrapped


def stop_process(proc: subprocess.Popen) -> str:
    """Stop a node the way an operator would (SIGINT, then SIGKILL after 15 s); return its piped output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout is not None else ""
