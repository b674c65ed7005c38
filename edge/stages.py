"""The bounded queue between two pipeline stages, with the two policies of the edge; a stage's workers
kept in order; stage priorities.

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


class InOrder:
    """Several workers of one stage: each takes the next item with a ticket, and results leave through
    `put` in ticket order, so the next stage sees frames in the order they came (a delta frame needs
    the one before it). A worker takes a new item only while fewer than `window` taken ones wait to
    leave: one slow item holds back a bounded number of results."""

    def __init__(self, source: StageQueue, put: Callable[[Any], bool], window: int) -> None:
        self.source, self.put, self.window = source, put, window
        self._take, self._out = threading.Lock(), threading.Condition()
        self._next_ticket = self._next_out = 0
        self.pending: dict[int, Any] = {}
        self.closed = False

    def close(self) -> None:
        """Take no more items (a worker failed: the results after its ticket could never leave in order)."""
        self.closed = True

    def take(self) -> tuple[Any, int]:
        """(the next item, its ticket), or (END, -1) once the source ends, the pipeline stops or this closes."""
        with self._take:
            with self._out:
                while self._next_ticket - self._next_out >= self.window:
                    if self.closed or self.source.stop.is_set():
                        return END, -1
                    self._out.wait(0.2)
            item = END if self.closed else self.source.get()
            if item is END:
                return END, -1
            self._next_ticket += 1
            return item, self._next_ticket - 1

    def done(self, ticket: int, result: Any) -> bool:
        """Hand on `result` once every earlier ticket's is; False if `put` refused one (the pipeline stopped:
        the results still held stay in `pending`)."""
        with self._out:
            self.pending[ticket] = result
            try:
                while self._next_out in self.pending:
                    if not self.put(self.pending.pop(self._next_out)):
                        self._next_out += 1
                        return False
                    self._next_out += 1
                return True
            finally:
                self._out.notify_all()


def lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness, not the process's (Linux keeps it per thread; threads it
    starts inherit it). Elsewhere, or when refused, a no-op: priority is an optimization, not a contract."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):  # lowering one's own priority needs no privilege
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def batch_scheduling() -> bool:
    """Put the calling thread, and the threads it starts from now on, under Linux's SCHED_BATCH: a thread that
    wakes (a frame captured, a result to encode, an ack) no longer preempts the one running, here the head,
    but waits for its time slice to end. On 2 cores that halves the agent's context switches and its CPU a
    frame drops by ~2.5 ms (8 A/B rounds of bench/edge.py's runs, README); the cost is a few ms of latency.
    No privilege is needed. Whether it took; elsewhere a no-op: scheduling is an optimization, not a contract."""
    if not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True
