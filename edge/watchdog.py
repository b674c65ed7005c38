"""The watchdog of a live source: a camera that stalls or drops its stream is closed and opened again.

A network camera can stop sending without closing anything (a hung RTSP session, a Wi-Fi bridge
that dropped the route): reads then block until some timeout, or forever. The watchdog reads the
source on a thread of its own and, when no frame arrives for `stall_timeout_s` or the stream ends,
closes it (an abandoned read ends by itself) and reopens it with exponential backoff, for as long
as the edge runs. Frame indices go on counting across reopens; every reopen is reported.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from edge.source import RECONNECT_DELAY_S, Source, SourceError

log = logging.getLogger("infocut.edge.source")

_END = object()


class Watchdog(Source):
    """A live `Source` that never ends before `close()`; `opener()` makes (and may fail to make) the real one."""

    live = True

    def __init__(self, opener: Callable[[], Source], description: str, stall_timeout_s: float = 10.0,
                 on_reopen: Callable[[str], None] | None = None,
                 backoff: tuple[float, float] = RECONNECT_DELAY_S) -> None:
        super().__init__(description)
        self.opener = opener
        self.stall_timeout_s = stall_timeout_s
        self.on_reopen = on_reopen or (lambda reason: None)
        self.backoff = backoff
        self.reopens = 0
        self._frames: queue.Queue = queue.Queue(maxsize=2)
        self._generation = 0
        self._count = 0
        self._inner: Source | None = opener()  # a source that cannot be opened at start is an error
        self.fps = self._inner.fps
        self._pump(self._inner)

    def _pump(self, inner: Source) -> None:
        """Read `inner` on its own thread into the frame queue, tagged with its generation."""
        gen = self._generation

        def read() -> None:
            for cap in inner:
                while not self._put((gen, cap.image)):
                    if gen != self._generation or self._closed.is_set():
                        return
            while not self._put((gen, _END)) and gen == self._generation and not self._closed.is_set():
                pass

        threading.Thread(target=read, name=f"watchdog-{self.description}", daemon=True).start()

    def _put(self, item: tuple[int, object]) -> bool:
        try:
            self._frames.put(item, timeout=0.1)
            return True
        except queue.Full:
            return False

    def _next_frame(self) -> tuple[int, np.ndarray] | None:
        waited = 0.0
        while not self._closed.is_set():
            try:
                gen, image = self._frames.get(timeout=0.1)
            except queue.Empty:
                waited += 0.1
                if self.stall_timeout_s and waited >= self.stall_timeout_s:
                    self._reopen(f"no frame for {self.stall_timeout_s:g} s")
                    waited = 0.0
                continue
            if gen != self._generation:
                continue  # from a source already replaced
            if image is _END:
                self._reopen("stream ended")
                waited = 0.0
                continue
            self._count += 1
            return self._count - 1, image
        return None

    def _reopen(self, reason: str) -> None:
        """Close the current source and open a new one, backing off while that fails (until close())."""
        self.reopens += 1
        log.warning("event=source_reopen source=%r reason=%r reopens=%d", self.description, reason, self.reopens)
        self.on_reopen(reason)
        self._drop_inner()
        delay = self.backoff[0]
        while not self._closed.wait(delay):
            try:
                inner = self.opener()
            except SourceError as e:
                log.warning("event=source_open_failed source=%r error=%r retry_in_s=%.1f", self.description,
                            str(e), min(delay * 2, self.backoff[1]))
                delay = min(delay * 2, self.backoff[1])
                continue
            self._inner = inner
            self._pump(inner)
            return

    def _drop_inner(self) -> None:
        self._generation += 1
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def _release(self) -> None:
        self._drop_inner()
