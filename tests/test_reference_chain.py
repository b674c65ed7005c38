"""The cloud's durable reference of delta frames: a chain of the frames as they came (from the last key frame
or checkpoint), stored with each frame, from which a restarted cloud rebuilds the codes the next delta
frame is coded against. A real SQLite store, the cloud's real decode and record path (a stand-in tail)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cloud import service as service_mod
from cloud.service import OK, IngestService
from cloud.store import Store
from codec import MissingReference
from codec.stream import StreamEncoder
from protos import infocut_pb2 as pb
from tests.test_fuzz import stand_in_artifact

SHAPE, BITS = (4, 6, 9), 3


class StandInTail:
    """What the service asks of its tail: a score and features per frame (the tail's ONNX is not the point)."""

    gap = 1

    def __call__(self, tensors, previous):
        return SimpleNamespace(score=float(tensors[0].mean()), features=np.zeros(1, np.float32))


def video(frames: int, seed: int = 0) -> list[np.ndarray]:
    """A static scene whose codes flicker a little from frame to frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 1 << BITS, (1, *SHAPE), dtype=np.uint8)
    out = []
    for _ in range(frames):
        flip = rng.random(base.shape) < 0.2
        out.append(np.where(flip, rng.integers(0, 1 << BITS, base.shape), base).astype(np.uint8))
    return out


@pytest.fixture
def artifact():
    return stand_in_artifact("ans", [SHAPE], BITS, video(12, seed=1))


def stream(service: IngestService, encoder: StreamEncoder, codes: list[np.ndarray], first: int) -> list[int]:
    """Send frames first.. of `codes` through the service's own path; their result codes."""
    out = []
    for i, c in enumerate(codes):
        seq = first + i
        frame = pb.Frame(camera_id="cam", seq=seq, capture_time_us=1_000_000 + seq, artifact_id="fuzz",
                         tensor=encoder.encode([c], seq))
        out.append(service._process(frame).status.code)
    return out


@pytest.mark.parametrize("max_chain", [256, 2])
def test_a_restarted_cloud_rebuilds_the_reference_from_the_stored_chain(artifact, tmp_path, monkeypatch, max_chain):
    monkeypatch.setattr(service_mod, "MAX_CHAIN", max_chain)  # 2: checkpoints of the codes between key frames
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    codes = video(14)
    encoder = StreamEncoder(BITS, "ans", artifact.entropy_models, key_interval=8)
    store = Store(url)
    assert stream(IngestService(artifact, store, tail=StandInTail()), encoder, codes[:11], 0) == [OK] * 11
    chain = store.reference_chain("cam")
    store.close()
    # key frames at 0 and 8: the chain starts at the last one, or at the checkpoint that frame 10 became
    assert [(x.seq, x.checkpoint) for x in chain] == ([(8, False), (9, False), (10, False)] if max_chain > 2
                                                      else [(10, True)])

    restarted = IngestService(artifact, Store(url), tail=StandInTail())
    data = encoder.encode([codes[11]], 11)  # a delta frame against frame 10, whose codes died with the first cloud
    np.testing.assert_array_equal(restarted.decode(data, "cam", 11).tensors[0], codes[11])
    frame = pb.Frame(camera_id="cam", seq=11, capture_time_us=1_000_011, artifact_id="fuzz", tensor=data)
    assert restarted._process(frame).status.code == OK
    assert stream(restarted, encoder, codes[12:], 12) == [OK] * 2
    np.testing.assert_array_equal(restarted.references.lookup("cam", 14)(1)[0], codes[13])


def test_an_unreadable_chain_means_no_reference_and_a_key_frame_recovers(artifact, tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    codes = video(4)
    encoder = StreamEncoder(BITS, "ans", artifact.entropy_models, key_interval=8)
    store = Store(url)
    stream(IngestService(artifact, store, tail=StandInTail()), encoder, codes[:3], 0)
    with store.engine.begin() as conn:  # the key frame's stored bytes corrupted on disk
        conn.exec_driver_sql("UPDATE reference_links SET data = X'00' WHERE seq = 0")
    restarted = IngestService(artifact, store, tail=StandInTail())
    delta = pb.Frame(camera_id="cam", seq=3, capture_time_us=3, artifact_id="fuzz", tensor=encoder.encode([codes[3]], 3))
    with pytest.raises(MissingReference):  # answered FAILED_PRECONDITION: the edge sends a key frame
        restarted._process(delta)
    encoder.request_key()
    assert stream(restarted, encoder, codes[3:], 3) == [OK]
