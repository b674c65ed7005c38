"""The link's outbox: encoded frames waiting for the cloud, in memory while the link keeps up, on disk past that.

Writing every frame to the spool costs bytes/frame x fps of writes (~750 kB/s for the demo artifact),
which wears an SD card for nothing while the link is healthy. In `overflow` mode a frame stays in
memory until its result comes, and only when `memory_frames` are already waiting (the link is down
or behind), or while the spool still holds frames, does it go to the spool. So memory always holds
the older frames and the spool the newer ones, and sending memory first, then the spool, keeps seq
order. A memory frame's result advances the spool's watermark, so numbering survives a restart.
The price: a crash loses the frames in memory (at most `memory_frames`; a clean stop writes them to
the spool when it can). `always` mode spools every frame first, as a write-ahead log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque

from edge.spool import Record, Spool


class Outbox:
    """Thread-safe: the encode stage puts, the link takes (`next`), resolves (`ack`) and resends (`rewind`)."""

    def __init__(self, spool: Spool, memory_frames: int, mode: str = "overflow") -> None:
        if mode not in ("overflow", "always"):
            raise ValueError(f"spool mode must be overflow or always, not {mode!r}")
        self.spool = spool
        self.memory_frames = memory_frames if mode == "overflow" else 0
        self.unsent: deque[Record] = deque()
        self.inflight: OrderedDict[int, Record] = OrderedDict()  # memory frames sent, result not yet back
        self.dropped: Counter[str] = Counter()
        self.cv = threading.Condition()
        self.closed = False

    def put(self, seq: int, capture_time_us: int, index: int, data: bytes, block: bool = False,
            cancel: threading.Event | None = None) -> bool:
        """Queue one frame; False if it was not kept (the spool refused it, counted there; or closed).
        `block`: wait for room in a full spool (until `cancel`), as a file source in lossless mode does."""
        with self.cv:
            if self.closed:
                return False
            held = len(self.unsent) + len(self.inflight)
            if held < self.memory_frames and self.spool.depth[0] == 0:
                self.unsent.append(Record(seq, capture_time_us, index, data))
                self.cv.notify_all()
                return True
        kept = self.spool.append(seq, capture_time_us, index, data, block=block, cancel=cancel)
        with self.cv:
            self.cv.notify_all()
        return kept

    def next(self, timeout: float = 0.2, limit: int | None = None) -> Record | None:
        """The oldest unsent frame, now in flight; None if none comes within `timeout` or `limit` are in flight."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while not self.closed:
                room = None if limit is None else limit - len(self.inflight)
                if room is None or room > 0:
                    if self.unsent:
                        rec = self.unsent.popleft()
                        self.inflight[rec.seq] = rec
                        return rec
                    rec = self.spool.next(timeout=0, limit=room)
                    if rec is not None:
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(min(left, 0.05))  # also polls the spool, whose TTL and acks change it
            return None

    def ack(self, seq: int) -> bool:
        """The cloud resolved frame `seq`; False if it was not in flight."""
        with self.cv:
            if self.inflight.pop(seq, None) is not None:
                self.spool.advance(seq)
                ok = True
            else:
                ok = self.spool.ack(seq)
            self.cv.notify_all()
            return ok

    def rewind(self) -> int:
        """After a reconnect every frame in flight is sent again, in seq order; returns how many."""
        with self.cv:
            again = list(self.inflight.values())
            self.inflight.clear()
            self.unsent.extendleft(reversed(again))
            n = len(again) + self.spool.rewind()
            self.cv.notify_all()
            return n

    @property
    def in_memory(self) -> int:
        with self.cv:
            return len(self.unsent) + len(self.inflight)

    @property
    def depth(self) -> tuple[int, int]:
        """(unresolved frames in memory and on disk, bytes of spool files)."""
        frames, nbytes = self.spool.depth
        return frames + self.in_memory, nbytes

    def drop_counts(self) -> Counter[str]:
        with self.cv:
            out = Counter(self.dropped)
        out.update(self.spool.drop_counts())
        return out

    def close(self) -> None:
        """Stop; frames still in memory go to the spool if it is empty (they would be out of order otherwise:
        then they are counted as dropped `shutdown`)."""
        with self.cv:
            if self.closed:
                return
            self.closed = True
            held = sorted([*self.inflight.values(), *self.unsent], key=lambda r: r.seq)
            self.unsent.clear()
            self.inflight.clear()
            self.cv.notify_all()
        spooled = 0
        if self.spool.depth[0] == 0:
            for rec in held:
                if rec.seq > self.spool.last_seq:
                    spooled += self.spool.append(rec.seq, rec.capture_time_us, rec.index, rec.data)
        with self.cv:
            if len(held) > spooled:
                self.dropped["shutdown"] += len(held) - spooled
        self.spool.close()
