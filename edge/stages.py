"""The bounded queue between two pipeline stages, with the two policies of the edge; stage priorities.

`realtime`: a full queue drops its oldest item (the consumer is behind; the freshest frame matters
most) and reports it through `on_drop`. `lossless`: a full queue blocks the producer (backpressure).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

END = object()  # what `get` returns once the queue is closed and empty


class StageQueue:
    def __init__(self, maxsize: int, drop_oldest: bool, on_drop: Callable[[Any], None],
                 stop: threading.Event) -> None:
        self.items: deque = deque()
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.on_drop = on_drop
        self.stop = stop
        self.cv = threading.Condition()
        self.closed = False

    def put(self, item: Any) -> bool:
        """Queue an item; False if the pipeline was stopped while waiting for room."""
        with self.cv:
            while len(self.items) >= self.maxsize:
                if self.drop_oldest:
                    self.on_drop(self.items.popleft())
                    break
                if self.stop.is_set():
                    return False
                self.cv.wait(0.2)
            self.items.append(item)
            self.cv.notify_all()
            return True

    def get(self) -> Any:
        """The oldest item; END once closed and drained, or when the pipeline stops."""
        with self.cv:
            while not self.items:
                if self.closed or self.stop.is_set():
                    return END
                self.cv.wait(0.2)
            item = self.items.popleft()
            self.cv.notify_all()
            return item

    def close(self) -> None:
        """No more items will come; `get` returns END after the last one."""
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def __len__(self) -> int:
        with self.cv:
            return len(self.items)


def lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness, not the process's (Linux keeps it per thread; threads it
    starts inherit it). Elsewhere, or when refused, a no-op: priority is an optimization, not a contract."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):  # lowering one's own priority needs no privilege
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
