"""The cloud's per-camera feature history: motion is only ever measured against the right frame."""

from __future__ import annotations

import numpy as np
import torch

from cloud.tail import CameraHistory


def feats(seq: int) -> np.ndarray:
    return np.full((1, 2, 3, 3), float(seq), np.float32)


def test_gap_one_continues_only_on_the_next_frame():
    h = CameraHistory(1)
    assert h.previous("a", 0) is None
    h.update("a", 0, feats(0))
    assert h.previous("a", 1)[0, 0, 0, 0] == 0
    assert h.previous("a", 2) is None, "after a lost frame there is no motion, not motion against seq 0"
    assert h.previous("b", 1) is None, "cameras never share history"


def test_gap_two_keeps_two_frames_and_matches_seq_minus_two():
    h = CameraHistory(2)
    for seq in range(5):
        prev = h.previous("a", seq)
        assert (prev is None) == (seq < 2)
        if prev is not None:
            assert prev[0, 0, 0, 0] == seq - 2
        h.update("a", seq, feats(seq))
    assert sorted(h._recent["a"]) == [3, 4], "only the last `gap` frames are held"


def test_late_frames_do_not_move_history_back():
    h = CameraHistory(1)
    h.update("a", 5, feats(5))
    h.update("a", 3, feats(3))
    assert h.previous("a", 6)[0, 0, 0, 0] == 5


def test_fitting_sees_motion_as_the_cloud_does():
    """splitter.scorer.lagged gives the same (prev, has) as the cloud history over one stream."""
    from splitter.scorer import lagged

    stream = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    for gap in (1, 2, 3):
        prev, has = lagged(stream, gap)
        h = CameraHistory(gap)
        for seq in range(6):
            p = h.previous("a", seq)
            assert bool(has[seq]) == (p is not None)
            if p is not None:
                assert float(prev[seq]) == float(p.item())
            h.update("a", seq, stream[seq].numpy())
