"""The durable store-and-forward spool: an on-disk FIFO of encoded frames, one per camera.

Every encoded frame is appended here before it is sent (a write-ahead outbox), so a dead link, a
slow cloud or a SIGKILL of the edge loses nothing that reached the spool; the cloud's acks trim it.

Layout of a spool directory:
- `<first seq, 20 digits>.seg`: append-only segment files of records
  `magic "ICR1" | u32 payload length | u32 CRC32(length + payload) | payload`, the payload being
  `i64 seq | i64 capture time (us) | i64 source index | the encoded frame`. No pickle anywhere.
- `acked`: `i64 watermark | u32 CRC32`: every record with seq <= watermark is resolved (acked by the
  cloud, rejected by it, or dropped here), rewritten in place after each ack, never fsynced: a lost
  ack only means a frame is sent again, and the cloud answers a resent frame with its stored result.

fsync policy: the active segment is fsynced at most every `fsync_interval` seconds while appending
(and by `next()` when it finds nothing to read), on every segment roll and on close. A SIGKILL loses nothing
written (the kernel holds the pages); a power cut loses at most the last interval of frames.

On open every segment is scanned (record headers only; the last segment in full, CRC checked): a torn
last record, as a crash in the middle of a write leaves it, is cut off with a log line.

Limits: `cap_bytes` bounds the segment files on disk, `ttl_s` the age of a frame (from its capture
time). When full, `drop-oldest` deletes the oldest segment (its unsent frames are counted as dropped)
and `reject-new` refuses the new frame (counted); `append(block=True)` waits for room instead, which
is how a lossless file source gets backpressure.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("infocut.edge.spool")

MAGIC = b"ICR1"
HEADER = struct.Struct("<4sII")  # magic, payload length, CRC32 of (length, payload)
FIXED = struct.Struct("<qqq")  # seq, capture time (us), source index: the payload's first bytes
ACKED = struct.Struct("<qI")  # watermark, CRC32 of the watermark
SUFFIX = ".seg"
MAX_RECORD = 256 * 1024 * 1024
WHEN_FULL = ("drop-oldest", "reject-new")


class SpoolError(RuntimeError):
    """A spool that cannot be used: bad settings, or a directory that is not a spool."""


@dataclass(frozen=True)
class Record:
    seq: int
    capture_time_us: int
    index: int
    data: bytes


@dataclass
class _Segment:
    path: Path
    fd: int
    first_seq: int
    last_seq: int = -1
    count: int = 0  # records in the file
    read: int = 0  # of those, how many the read cursor has passed
    size: int = 0
    newest_us: int = 0  # capture time of the last record
    evicted: str = ""  # why it was deleted before all its frames were resolved


def _record(seq: int, capture_time_us: int, index: int, data: bytes) -> bytes:
    payload = FIXED.pack(seq, capture_time_us, index) + data
    length = struct.pack("<I", len(payload))
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(length + payload)) + payload


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


class Spool:
    """A durable FIFO of records in seq order; thread-safe (appends and reads/acks from other threads)."""

    def __init__(self, directory: str | Path, cap_bytes: int = 1 << 30, ttl_s: float = 0.0,
                 when_full: str = "drop-oldest", segment_bytes: int | None = None,
                 fsync_interval: float = 1.0, on_drop: Callable[[], None] | None = None) -> None:
        if when_full not in WHEN_FULL:
            raise SpoolError(f"spool when_full must be one of {', '.join(WHEN_FULL)}, not {when_full!r}")
        if cap_bytes < 4096:
            raise SpoolError(f"spool cap_bytes must be at least 4096, not {cap_bytes}")
        if ttl_s < 0 or fsync_interval < 0:
            raise SpoolError("spool ttl_s and fsync_interval must be >= 0 (0: no TTL / fsync every append)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cap = cap_bytes
        self.ttl_us = int(ttl_s * 1e6)
        self.when_full = when_full
        # Several segments per cap, so that dropping the oldest frees a fraction of the spool, not all of it.
        self.segment_bytes = segment_bytes or min(max(cap_bytes // 16, 4096), 64 << 20)
        self.fsync_interval = fsync_interval
        self.dropped: Counter[str] = Counter()  # reason -> frames dropped here
        # Called after frames are dropped: in a delta-coded stream the next frame must be a key frame.
        self.on_drop = on_drop or (lambda: None)
        self.cv = threading.Condition()
        self.segments: list[_Segment] = []
        self.inflight: OrderedDict[int, _Segment] = OrderedDict()  # read (sent), not yet resolved
        self.skipped: set[int] = set()  # dropped on read (TTL, CRC) above the watermark: not counted twice
        self.pending = 0  # unresolved records on disk (in flight included)
        self.last_seq = -1
        self.last_index = -1
        self._cursor = (0, 0)  # (segment position in self.segments, byte offset) of the next unread record
        self._unsynced = False
        self._synced_at = time.monotonic()
        self._closed = False
        self._acked_fd = os.open(self.dir / "acked", os.O_RDWR | os.O_CREAT, 0o644)
        self.watermark = self._read_watermark()
        self._open_segments()

    # -- opening ----------------------------------------------------------------------------------
    def _read_watermark(self) -> int:
        raw = os.pread(self._acked_fd, ACKED.size, 0)
        if len(raw) < ACKED.size:
            return -1
        mark, crc = ACKED.unpack(raw)
        if zlib.crc32(struct.pack("<q", mark)) != crc:
            log.warning("event=spool_ack_index_corrupt dir=%s action=resend_all", self.dir)
            return -1
        return mark

    def _write_watermark(self) -> None:
        packed = struct.pack("<q", self.watermark)
        os.pwrite(self._acked_fd, ACKED.pack(self.watermark, zlib.crc32(packed)), 0)

    def _open_segments(self) -> None:
        paths = sorted(self.dir.glob("*" + SUFFIX))
        for i, path in enumerate(paths):
            try:
                first = int(path.stem)
            except ValueError:
                raise SpoolError(f"{path}: not a spool segment (expected <seq>{SUFFIX})") from None
            seg = _Segment(path, os.open(path, os.O_RDWR | os.O_APPEND), first)
            self._scan(seg, verify=i == len(paths) - 1)
            if seg.count == 0 and i < len(paths) - 1:
                os.close(seg.fd)
                path.unlink()
                continue
            self.segments.append(seg)
        if not self.segments:
            self._roll(self.watermark + 1)
        self._seek(self.watermark + 1)
        self.last_seq = max(self.last_seq, self.watermark)

    def _scan(self, seg: _Segment, verify: bool) -> None:
        """Count a segment's records; cut a torn or corrupt tail off (the last segment is CRC-checked)."""
        end = os.fstat(seg.fd).st_size
        off = 0
        while off < end:
            head = os.pread(seg.fd, HEADER.size + FIXED.size, off)
            problem = None
            if len(head) < HEADER.size + FIXED.size:
                problem = "short header"
            else:
                magic, length, crc = HEADER.unpack_from(head)
                if magic != MAGIC or not FIXED.size <= length <= MAX_RECORD:
                    problem = "bad header"
                elif off + HEADER.size + length > end:
                    problem = "short record"
                elif verify:
                    payload = os.pread(seg.fd, length, off + HEADER.size)
                    if zlib.crc32(struct.pack("<I", length) + payload) != crc:
                        problem = "CRC mismatch"
            if problem:
                log.warning("event=spool_torn_tail file=%s offset=%d reason=%r dropped_bytes=%d",
                            seg.path, off, problem, end - off)
                os.ftruncate(seg.fd, off)
                break
            seq, capture_us, index = FIXED.unpack_from(head, HEADER.size)
            seg.count += 1
            seg.last_seq, seg.newest_us = seq, capture_us
            self.last_seq, self.last_index = max(self.last_seq, seq), index
            if seq > self.watermark:
                self.pending += 1
            off += HEADER.size + length
        seg.size = off

    # -- writing ----------------------------------------------------------------------------------
    def _roll(self, first_seq: int) -> None:
        if self.segments:
            self._sync()
        path = self.dir / _segment_name(first_seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.segments.append(_Segment(path, fd, first_seq))
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new file's name is durable too
        finally:
            os.close(dfd)

    def append(self, seq: int, capture_time_us: int, index: int, data: bytes, block: bool = False,
               timeout: float | None = None, cancel: threading.Event | None = None) -> bool:
        """Append one frame; False if it was not kept (reject-new when full, or too large: counted).

        `block`: wait for room instead, until `timeout`, close() or `cancel` is set (then False, not counted)."""
        rec = _record(seq, capture_time_us, index, data)
        with self.cv:
            if self._closed:
                return False
            if seq <= self.last_seq:
                raise SpoolError(f"seq {seq} appended after {self.last_seq}: the spool is in seq order")
            if len(rec) > self.cap:
                self._drop("too_large", 1)
                return False
            self._expire(capture_time_us)
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._disk_bytes() + len(rec) > self.cap:
                self._trim(roll=True)
                if self._disk_bytes() + len(rec) <= self.cap:
                    break
                if block:
                    left = None if deadline is None else deadline - time.monotonic()
                    if self._closed or (left is not None and left <= 0) or (cancel is not None and cancel.is_set()):
                        return False
                    self.cv.wait(0.5 if left is None else min(left, 0.5))
                    continue
                if self.when_full == "reject-new" or not self._evict_oldest("spool_full"):
                    self._drop("spool_rejected", 1)
                    return False
            active = self.segments[-1]
            if active.size and active.size + len(rec) > self.segment_bytes:
                self._roll(seq)
                active = self.segments[-1]
            os.write(active.fd, rec)
            active.count += 1
            active.size += len(rec)
            active.last_seq, active.newest_us = seq, capture_time_us
            self.last_seq, self.last_index = seq, index
            self.pending += 1
            self._unsynced = True
            if time.monotonic() - self._synced_at >= self.fsync_interval:
                self._sync()
            self.cv.notify_all()
            return True

    def _disk_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def _sync(self) -> None:
        if self._unsynced and self.segments:
            os.fsync(self.segments[-1].fd)
        self._unsynced = False
        self._synced_at = time.monotonic()

    # -- dropping ---------------------------------------------------------------------------------
    def _drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] += n
            self.on_drop()

    def _evict_oldest(self, reason: str) -> bool:
        """Delete the oldest segment, counting its unread frames as dropped; False if nothing can go.

        Frames of it already in flight stay in flight: acked, they count as acked; if the link drops
        first, `rewind` counts them as dropped for this reason."""
        if len(self.segments) == 1:
            if self.segments[0].size == 0:
                return False
            self._roll(self.last_seq + 1)  # never delete the file being appended to: start a new one
        seg = self.segments.pop(0)
        seg.evicted = reason
        unread = seg.count - seg.read
        if unread:
            self._drop(reason, unread)
            self.pending -= unread
            log.warning("event=spool_drop reason=%s frames=%d segment=%s", reason, unread, seg.path.name)
        self._delete(seg)
        pos, off = self._cursor
        self._cursor = (pos - 1, off) if pos > 0 else (0, 0)
        self._advance_watermark()
        self.cv.notify_all()
        return True

    def _expire(self, now_us: int) -> None:
        """TTL: drop whole segments whose newest frame is too old (never the one being appended to)."""
        while self.ttl_us and len(self.segments) > 1 and self.segments[0].newest_us < now_us - self.ttl_us:
            self._evict_oldest("ttl")

    def _delete(self, seg: _Segment) -> None:
        os.close(seg.fd)
        seg.path.unlink(missing_ok=True)

    def _trim(self, roll: bool = False) -> None:
        """Delete fully resolved segments; with `roll`, the active one too if it is resolved (to make room)."""
        active = self.segments[-1]
        if roll and active.size and active.last_seq <= self.watermark and not self.inflight:
            self._roll(self.last_seq + 1)
        while len(self.segments) > 1 and self.segments[0].last_seq <= self.watermark:
            pos, off = self._cursor
            if pos == 0 and off < self.segments[0].size:
                break
            self._delete(self.segments.pop(0))
            self._cursor = (pos - 1, off) if pos > 0 else (0, 0)
        self.cv.notify_all()

    # -- reading ----------------------------------------------------------------------------------
    def _seek(self, seq: int) -> None:
        """Put the read cursor on the first record with seq >= `seq`; earlier records count as read."""
        for i, seg in enumerate(self.segments):
            seg.read = 0
            if seg.last_seq >= seq or i == len(self.segments) - 1:
                off = 0
                while off < seg.size:
                    head = os.pread(seg.fd, HEADER.size + FIXED.size, off)
                    if FIXED.unpack_from(head, HEADER.size)[0] >= seq:
                        break
                    seg.read += 1
                    off += HEADER.size + HEADER.unpack_from(head)[1]
                self._cursor = (i, off)
                for later in self.segments[i + 1:]:
                    later.read = 0
                return
            seg.read = seg.count

    def _read_next(self) -> tuple[Record, _Segment] | None:
        """The record under the cursor (CRC-checked), advancing it; None at the end of the spool."""
        while True:
            pos, off = self._cursor
            if pos >= len(self.segments):
                return None
            seg = self.segments[pos]
            if off >= seg.size:
                if pos == len(self.segments) - 1:
                    return None
                self._cursor = (pos + 1, 0)
                continue
            magic, length, crc = HEADER.unpack(os.pread(seg.fd, HEADER.size, off))
            if magic != MAGIC or not FIXED.size <= length <= seg.size - off - HEADER.size:
                lost = seg.count - seg.read  # the rest of this segment cannot be framed any more
                log.warning("event=spool_corrupt_header file=%s offset=%d action=drop frames=%d", seg.path, off, lost)
                self._cursor = (pos, seg.size)
                seg.read = seg.count
                self._resolve_unsent("corrupt", lost)
                continue
            payload = os.pread(seg.fd, length, off + HEADER.size)
            self._cursor = (pos, off + HEADER.size + length)
            seg.read += 1
            seq, capture_us, index = FIXED.unpack_from(payload)
            if seq in self.skipped:
                continue
            if zlib.crc32(struct.pack("<I", length) + payload) != crc:
                log.warning("event=spool_corrupt_record file=%s offset=%d seq=%d action=drop", seg.path, off, seq)
                self._resolve_unsent("corrupt", seq=seq)
                continue
            return Record(seq, capture_us, index, payload[FIXED.size:]), seg

    def _resolve_unsent(self, reason: str, n: int = 1, seq: int | None = None) -> None:
        self._drop(reason, n)
        self.pending -= n
        if seq is not None:
            self.skipped.add(seq)
        self._advance_watermark()

    def next(self, timeout: float = 0.2, limit: int | None = None) -> Record | None:
        """The oldest unsent frame, now in flight; None if there is none within `timeout`, or while
        `limit` frames are already in flight. Frames older than the TTL are dropped (counted) on the way."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while not self._closed:
                if limit is None or len(self.inflight) < limit:
                    got = self._read_next()
                    while got is not None and self.ttl_us and \
                            got[0].capture_time_us < time.time() * 1e6 - self.ttl_us:
                        self._resolve_unsent("ttl", seq=got[0].seq)
                        got = self._read_next()
                    if got is not None:
                        rec, seg = got
                        self.inflight[rec.seq] = seg
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            if not self._closed and self._unsynced and time.monotonic() - self._synced_at >= self.fsync_interval:
                self._sync()
            return None

    def ack(self, seq: int) -> bool:
        """The cloud resolved frame `seq` (stored it or rejected it); False if it was not in flight."""
        with self.cv:
            if self._closed or self.inflight.pop(seq, None) is None:
                return False
            self.pending -= 1
            self._advance_watermark()
            self._trim()
            return True

    def rewind(self) -> int:
        """After a reconnect: every frame in flight is read (sent) again, in order; returns how many.

        In-flight frames whose segment was dropped meanwhile are counted as dropped now."""
        with self.cv:
            if self._closed:
                return 0
            again = 0
            for seg in self.inflight.values():
                if seg.evicted:
                    self._drop(seg.evicted, 1)
                    self.pending -= 1
                else:
                    again += 1
            self.inflight.clear()
            self._seek(self.watermark + 1)
            self._advance_watermark()
            self.cv.notify_all()
            return again

    def _first_unresolved(self) -> int:
        """The lowest seq not yet resolved (last_seq + 1 when every record is)."""
        pos, off = self._cursor
        nxt = self.last_seq + 1
        if pos < len(self.segments) and off < self.segments[pos].size:
            head = os.pread(self.segments[pos].fd, HEADER.size + FIXED.size, off)
            nxt = FIXED.unpack_from(head, HEADER.size)[0]
        elif pos + 1 < len(self.segments):
            nxt = self.segments[pos + 1].first_seq
        return min(min(self.inflight, default=nxt), nxt)

    def _advance_watermark(self) -> None:
        """watermark = the highest seq with every record at or below it resolved."""
        mark = self._first_unresolved() - 1
        if mark > self.watermark:
            self.watermark = mark
            self.skipped = {s for s in self.skipped if s > mark}
            self._write_watermark()

    def advance(self, seq: int) -> None:
        """Frame `seq` was resolved without ever being spooled (edge/outbox.py keeps healthy-link frames in
        memory): move the watermark, so that numbering after a restart continues past it. Ignored while
        a spooled frame at or below `seq` is unresolved."""
        with self.cv:
            if self._closed or seq <= self.watermark or (self.pending and self._first_unresolved() <= seq):
                return
            self.watermark = seq
            self.last_seq = max(self.last_seq, seq)
            self._write_watermark()

    def first_unresolved(self) -> int:
        """The lowest seq this spool still has to deliver (last_seq + 1 when it holds none)."""
        with self.cv:
            return self._first_unresolved()

    def clear(self, through: int) -> int:
        """Forget every frame and number on from `through` + 1 (a file source read again from the frame after
        `through`); returns how many frames were unresolved. Not counted as dropped: they are captured again."""
        with self.cv:
            if self._closed:
                return 0
            n = self.pending
            for seg in self.segments:
                self._delete(seg)
            self.segments, self.inflight, self.skipped = [], OrderedDict(), set()
            self.pending, self._cursor, self.last_index = 0, (0, 0), -1
            self.watermark = self.last_seq = through
            self._write_watermark()
            self._roll(through + 1)
            self.cv.notify_all()
            return n

    # -- state ------------------------------------------------------------------------------------
    @property
    def depth(self) -> tuple[int, int]:
        """(unresolved frames, bytes of segment files on disk)."""
        with self.cv:
            return self.pending, self._disk_bytes()

    def drop_counts(self) -> Counter[str]:
        """A copy of `dropped` (reason -> frames), safe to read from another thread."""
        with self.cv:
            return Counter(self.dropped)

    def close(self) -> None:
        with self.cv:
            if self._closed:
                return
            self._closed = True
            self._sync()
            for seg in self.segments:
                os.close(seg.fd)
            os.close(self._acked_fd)
            self.cv.notify_all()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
