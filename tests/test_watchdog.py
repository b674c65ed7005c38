"""edge.watchdog: a live camera that stalls or drops its stream is closed and reopened with backoff,
frame numbering goes on, and every reopen is reported. The camera is a test double (the one boundary)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.source import Source, SourceError
from edge.watchdog import Watchdog


class FakeCamera(Source):
    """Yields `frames` frames whose pixels are their session number, then stalls (blocks until closed)
    or ends, as a hung or a dropped network stream does."""

    live = True

    def __init__(self, session: int, frames: int, then: str) -> None:
        super().__init__(f"fake camera session {session}")
        self.session, self.left, self.then = session, frames, then
        self.released = threading.Event()

    def _next_frame(self):
        if self.left:
            self.left -= 1
            return 0, np.full((4, 4, 3), self.session, np.uint8)
        if self.then == "stall":
            self.released.wait()
        return None

    def close(self) -> None:
        self.released.set()  # a real capture's blocked read returns once the socket is closed
        super().close()


def opener(plan: list[tuple[int, str] | Exception]):
    sessions: list[FakeCamera] = []

    def open_() -> FakeCamera:
        step = plan[min(len(sessions), len(plan) - 1)]
        if isinstance(step, Exception):
            sessions.append(None)  # type: ignore[arg-type]
            raise step
        cam = FakeCamera(len(sessions), *step)
        sessions.append(cam)
        return cam

    return open_, sessions


@pytest.mark.timeout(30)
def test_a_stalled_camera_is_reopened_and_numbering_goes_on():
    open_, sessions = opener([(3, "stall"), (2, "stall"), (100, "stall")])
    reasons: list[str] = []
    src = Watchdog(open_, "fake", stall_timeout_s=0.3, on_reopen=reasons.append, backoff=(0.05, 0.2))
    frames = []
    t0 = time.monotonic()
    for cap in src:
        frames.append(cap)
        if len(frames) == 8:
            break
    src.close()
    assert [f.index for f in frames] == list(range(8))
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert src.reopens == 2 and reasons == ["no frame for 0.3 s"] * 2
    assert sessions[0].released.is_set() and sessions[1].released.is_set(), "the stalled sessions were closed"
    assert time.monotonic() - t0 < 10


@pytest.mark.timeout(30)
def test_a_dropped_stream_is_reopened_after_failed_attempts_with_backoff():
    open_, sessions = opener([(2, "end"), SourceError("refused"), SourceError("refused"), (3, "stall")])
    reasons: list[str] = []
    src = Watchdog(open_, "fake", stall_timeout_s=5, on_reopen=reasons.append, backoff=(0.05, 0.1))
    frames = [next(src) for _ in range(5)]
    src.close()
    assert [f.index for f in frames] == list(range(5))
    assert reasons == ["stream ended"] and len(sessions) == 4, "two failed opens, then a good one"
    assert list(src) == []


@pytest.mark.timeout(30)
def test_close_from_another_thread_ends_a_stalled_watchdog():
    open_, _ = opener([(1, "stall")])
    src = Watchdog(open_, "fake", stall_timeout_s=0)  # 0: never reopened for silence
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(c.index for c in src))
    reader.start()
    time.sleep(0.5)
    src.close()
    reader.join(5)
    assert not reader.is_alive() and seen == [0]


def test_a_camera_that_cannot_be_opened_at_start_is_an_error():
    with pytest.raises(SourceError, match="refused"):
        Watchdog(opener([SourceError("refused")])[0], "fake")
