"""The whole split pipeline in one process: head -> codec -> tail, frame by frame.

This is the reference the distributed path must reproduce (tests/test_e2e.py) and what the
benchmarks measure; it uses the very same pieces as the edge and cloud.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from cloud.tail import CameraHistory, Tail
from codec import decode_frame
from codec.stream import References, StreamEncoder
from edge.head import Head
from infocut.artifact import Artifact


@dataclass
class Run:
    scores: list[float] = field(default_factory=list)
    frame_bytes: list[int] = field(default_factory=list)
    head_s: list[float] = field(default_factory=list)
    tail_s: list[float] = field(default_factory=list)


class Pipeline:
    def __init__(self, artifact: Artifact, threads: int = 0):
        self.artifact = artifact
        self.head = Head(artifact, threads)
        self.tail = Tail(artifact, threads)
        self.history = CameraHistory(self.tail.gap)
        self.models = artifact.entropy_models
        self.references = References()

    def encoder(self, key_interval: int | None = None) -> StreamEncoder:
        """A camera's stream encoder (key frames every `key_interval`, the artifact's by default)."""
        a = self.artifact
        return StreamEncoder(a.bits, a.coder, self.models, a.key_interval if key_interval is None else key_interval)

    def score(self, camera_id: str, seq: int, frame: bytes):
        codes = decode_frame(frame, self.models, self.references.lookup(camera_id, seq)).tensors
        self.references.update(camera_id, seq, codes)
        scored = self.tail(codes, self.history.previous(camera_id, seq))
        self.history.update(camera_id, seq, scored.features)
        return scored

    def run(self, images: Iterable[np.ndarray], camera_id: str = "offline", key_interval: int | None = None) -> Run:
        run = Run()
        encoder = self.encoder(key_interval)
        for seq, image in enumerate(images):
            t0 = time.perf_counter()
            codes = self.head(image[None])
            t1 = time.perf_counter()
            frame = encoder.encode(codes, seq)
            t2 = time.perf_counter()
            scored = self.score(camera_id, seq, frame)
            t3 = time.perf_counter()
            run.scores.append(scored.score)
            run.frame_bytes.append(len(frame))
            run.head_s.append(t1 - t0)
            run.tail_s.append(t3 - t2)
        return run
