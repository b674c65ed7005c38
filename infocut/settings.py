"""Where the things outside the repository are: the shared data and models, the bundled demo."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_ARTIFACT = REPO / "artifacts" / "demo"
DEMO_CLIP = REPO / "assets" / "ped2_test01.mp4"
DEMO_LABELS = REPO / "assets" / "ped2_test01.labels.json"


def shared_dir() -> Path:
    """The shared data/models folder: $INFOCUT_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("INFOCUT_SHARED", REPO.parent / "shared")).resolve()


def require_shared(*parts: str) -> Path:
    """A path inside the shared folder, or a clear error saying how to provide it."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: this needs the shared data/models folder "
            "(set INFOCUT_SHARED to its location; by default ../shared beside the repository)"
        )
    return path
