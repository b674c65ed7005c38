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
from codec import decode_frame, encode_frame
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

    def encode(self, image: np.ndarray) -> bytes:
        codes = self.head(image[None])
        return encode_frame(codes, self.artifact.bits, self.artifact.coder)

    def score(self, camera_id: str, seq: int, frame: bytes):
        codes = decode_frame(frame).tensors
        scored = self.tail(codes, self.history.previous(camera_id, seq))
        self.history.update(camera_id, seq, scored.features)
        return scored

    def run(self, images: Iterable[np.ndarray], camera_id: str = "offline") -> Run:
        run = Run()
        for seq, image in enumerate(images):
            t0 = time.perf_counter()
            codes = self.head(image[None])
            t1 = time.perf_counter()
            frame = encode_frame(codes, self.artifact.bits, self.artifact.coder)
            t2 = time.perf_counter()
            scored = self.score(camera_id, seq, frame)
            t3 = time.perf_counter()
            run.scores.append(scored.score)
            run.frame_bytes.append(len(frame))
            run.head_s.append(t1 - t0)
            run.tail_s.append(t3 - t2)
        return run
