"""The tail: tail.onnx in onnxruntime, with the per-camera feature history it needs.

The scorer compares each frame's features with the camera's previous frame's, so the tail is
stateful: `CameraHistory` keeps, per camera, the features of the last `gap` frames by sequence
number. A frame is scored against frame seq - gap only when that very frame is held; after a
loss, a restart or out-of-order delivery it is scored without motion rather than against the
wrong frame, so the same frames in the same order give the same scores everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.head import session
from infocut.artifact import Artifact


@dataclass
class Scored:
    score: float
    anomaly_map: np.ndarray
    features: np.ndarray


class Tail:
    def __init__(self, artifact: Artifact, threads: int = 0, providers: str | list[str] = "cpu"):
        self.artifact = artifact
        self.sess = session(artifact.tail_path, threads, providers)
        self.providers = self.sess.get_providers()
        state = artifact.manifest["scorer"]["state"]
        self.state_shape = tuple(state["shape"])
        self.gap = int(state.get("gap", 1))
        self.inputs = artifact.cut_names

    def __call__(self, codes: list[np.ndarray], prev: np.ndarray | None) -> Scored:
        """Score one frame (batch of 1), given as the codes of each cut tensor in the manifest's order, against
        the previous frame's features, or None."""
        if len(codes) != len(self.inputs):
            raise ValueError(f"the cut carries {len(self.inputs)} tensors, got {len(codes)}")
        has = np.ones(1, np.float32) if prev is not None else np.zeros(1, np.float32)
        if prev is None:
            prev = np.zeros((1, *self.state_shape), np.float32)
        feed = dict(zip(self.inputs, codes), prev_features=prev, has_prev=has)
        score, amap, feats = self.sess.run(None, feed)
        return Scored(float(score[0]), amap[0], feats)


class CameraHistory:
    """camera id -> {seq: features} of its last `gap` frames scored."""

    def __init__(self, gap: int = 1):
        self.gap = gap
        self._recent: dict[str, dict[int, np.ndarray]] = {}

    def previous(self, camera_id: str, seq: int) -> np.ndarray | None:
        return self._recent.get(camera_id, {}).get(seq - self.gap)

    def update(self, camera_id: str, seq: int, features: np.ndarray) -> None:
        recent = self._recent.setdefault(camera_id, {})
        if recent and seq <= max(recent):
            return  # a late frame: the history only moves forward
        recent[seq] = features
        for old in [s for s in recent if s <= seq - self.gap]:
            del recent[old]
