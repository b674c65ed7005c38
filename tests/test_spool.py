"""The durable spool: order, ack trimming, cap and both full policies, TTL, torn tail, reopen after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from edge.spool import Spool, SpoolError
from infocut.settings import REPO


def now_us() -> int:
    return int(time.time() * 1e6)


def fill(spool: Spool, seqs, size: int = 100, **kw) -> list[bool]:
    return [spool.append(s, now_us(), s, bytes([s % 256]) * size, **kw) for s in seqs]


def drain(spool: Spool, ack: bool = True) -> list[int]:
    out = []
    while (rec := spool.next(timeout=0)) is not None:
        assert rec.data == bytes([rec.seq % 256]) * len(rec.data)
        out.append(rec.seq)
        if ack:
            spool.ack(rec.seq)
    return out


def test_fifo_order_ack_trims_and_reopen_keeps_only_unacked(tmp_path):
    with Spool(tmp_path, cap_bytes=1 << 20, segment_bytes=1000) as sp:
        fill(sp, range(50))
        assert sp.depth[0] == 50
        before = len(list(tmp_path.glob("*.seg")))  # 136-byte records, 7 per segment: 8 segments
        got = [sp.next(timeout=0).seq for _ in range(20)]
        assert got == list(range(20))
        for s in got:
            assert sp.ack(s)
        assert not sp.ack(3), "an ack for a frame not in flight is ignored"
        assert sp.depth[0] == 30
        assert sp.watermark == 19
        assert len(list(tmp_path.glob("*.seg"))) == before - 20 // 7, "fully acked segments were deleted"
    with Spool(tmp_path, cap_bytes=1 << 20, segment_bytes=1000) as sp:
        assert sp.depth[0] == 30 and sp.last_seq == 49 and sp.last_index == 49
        assert drain(sp) == list(range(20, 50))
        assert sp.depth[0] == 0
    with Spool(tmp_path) as sp:
        assert sp.last_seq == 49, "the last seq survives even when everything is acked"
        assert sp.next(timeout=0) is None


def test_rewind_resends_in_flight_frames_in_order(tmp_path):
    with Spool(tmp_path, segment_bytes=500) as sp:
        fill(sp, [3, 4, 7, 8, 9])  # gaps in seq (frames dropped upstream) are fine
        a, b, c = (sp.next(timeout=0) for _ in range(3))
        sp.ack(a.seq)
        assert sp.next(timeout=0, limit=2) is None, "the in-flight window is full"
        assert sp.rewind() == 2
        assert drain(sp) == [4, 7, 8, 9]
        with pytest.raises(SpoolError, match="seq order"):
            sp.append(9, now_us(), 0, b"x")


def test_drop_oldest_when_full_counts_every_dropped_frame(tmp_path):
    calls = []
    with Spool(tmp_path, cap_bytes=8192, segment_bytes=1024, when_full="drop-oldest",
               on_drop=lambda: calls.append(1)) as sp:
        assert all(fill(sp, range(200)))
        assert calls, "a drop tells the encoder (its next frame must be a key frame)"
        pending, disk = sp.depth
        assert disk <= 8192
        kept = drain(sp)
        assert kept == list(range(200 - len(kept), 200)), "the newest frames are kept, in order"
        assert sp.dropped["spool_full"] + len(kept) == 200
        assert pending == len(kept)


def test_reject_new_when_full_keeps_the_oldest(tmp_path):
    with Spool(tmp_path, cap_bytes=8192, segment_bytes=1024, when_full="reject-new") as sp:
        ok = fill(sp, range(200))
        n = sum(ok)
        assert ok == [True] * n + [False] * (200 - n) and 0 < n < 200
        assert sp.dropped["spool_rejected"] == 200 - n
        assert drain(sp) == list(range(n))
        assert sp.append(500, now_us(), 500, b"y" * 100), "room again once acked"


def test_block_waits_for_room_instead_of_dropping(tmp_path):
    import threading

    with Spool(tmp_path, cap_bytes=8192, segment_bytes=1024) as sp:
        fill(sp, range(60))
        assert not sp.append(60, now_us(), 60, b"z" * 100, block=True, timeout=0.3), "full: timed out"

        def consume():
            time.sleep(0.3)
            drain(sp)

        t = threading.Thread(target=consume)
        t.start()
        assert sp.append(61, now_us(), 61, bytes([61]) * 100, block=True, timeout=10)
        t.join()
        assert sum(sp.dropped.values()) == 0


def test_ttl_drops_old_frames_on_read_and_whole_segments_on_append(tmp_path):
    with Spool(tmp_path, ttl_s=60, segment_bytes=300) as sp:
        old = now_us() - 120_000_000
        for s in range(6):
            sp.append(s, old, s, bytes([s]) * 100)
        sp.append(6, now_us(), 6, bytes([6]) * 100)  # evicts the expired segments it can
        assert drain(sp) == [6]
        assert sp.dropped["ttl"] == 6
        assert sp.depth[0] == 0


def test_a_frame_dropped_on_read_is_not_counted_again_after_a_rewind(tmp_path):
    with Spool(tmp_path, ttl_s=60) as sp:
        sp.append(1, now_us(), 1, bytes([1]) * 10)
        sp.append(2, now_us() - 120_000_000, 2, bytes([2]) * 10)  # captured 2 minutes ago
        sp.append(3, now_us(), 3, bytes([3]) * 10)
        assert [sp.next(timeout=0).seq, sp.next(timeout=0).seq] == [1, 3]
        assert sp.rewind() == 2, "the link dropped before any ack"
        assert drain(sp) == [1, 3]
        assert sp.dropped == {"ttl": 1} and sp.depth[0] == 0 and sp.watermark == 3


def test_torn_tail_is_cut_with_a_log_line_and_earlier_frames_survive(tmp_path, caplog):
    with Spool(tmp_path) as sp:
        fill(sp, range(5))
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of the last write
        f.truncate(size - 30)
    with caplog.at_level("WARNING", logger="infocut.edge.spool"), Spool(tmp_path) as sp:
        assert "spool_torn_tail" in caplog.text
        assert drain(sp) == [0, 1, 2, 3]
        assert sp.last_seq == 3
        fill(sp, [4])
        assert drain(sp) == [4]
    with open(seg, "r+b") as f:  # a bit flip in the last record: its CRC catches it
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    caplog.clear()
    with caplog.at_level("WARNING", logger="infocut.edge.spool"), Spool(tmp_path) as sp:
        assert "CRC mismatch" in caplog.text
        assert sp.last_seq == 4, "cut from the segment, but the ack index remembers seq 4 was delivered"
        assert sp.next(timeout=0) is None


def test_reopen_after_sigkill_mid_append_replays_unacked_in_order(tmp_path):
    """A writer process killed at a random point: what is on disk reads back in order, each frame once."""
    code = (
        "import sys, time\n"
        "from edge.spool import Spool\n"
        "sp = Spool(sys.argv[1], segment_bytes=4096)\n"
        "for s in range(10**6):\n"
        "    sp.append(s, int(time.time()*1e6), s, bytes([s % 256]) * 700)\n"
        "    if s == 20: print('go', flush=True)\n"
        "    if s % 3 == 0 and s > 0:\n"
        "        r = sp.next(timeout=0)\n"
        "        sp.ack(r.seq)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Spool(tmp_path, segment_bytes=4096) as sp:
        mark, last = sp.watermark, sp.last_seq
        assert last > 20
        assert drain(sp) == list(range(mark + 1, last + 1))


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(SpoolError, match="when_full"):
        Spool(tmp_path, when_full="drop-newest")
    with pytest.raises(SpoolError, match="cap_bytes"):
        Spool(tmp_path, cap_bytes=10)
    (tmp_path / "junk.seg").write_bytes(b"")
    with pytest.raises(SpoolError, match="not a spool segment"):
        Spool(tmp_path)


def test_advance_records_frames_resolved_elsewhere_but_never_passes_a_spooled_one(tmp_path):
    with Spool(tmp_path) as sp:
        sp.advance(4)  # frames 0..4 went to the cloud from memory
        assert sp.watermark == 4 and sp.last_seq == 4
        assert sp.append(5, 0, 5, b"x")
        sp.advance(7)  # frame 5 is still spooled: the watermark cannot pass it
        assert sp.watermark == 4
    with Spool(tmp_path) as sp:
        assert sp.last_seq == 5 and sp.next(timeout=0).seq == 5


def test_block_gives_up_when_cancelled(tmp_path):
    import threading

    cancel = threading.Event()
    with Spool(tmp_path, cap_bytes=4096) as sp:
        assert sp.append(0, 0, 0, b"x" * 3000)
        threading.Timer(0.3, cancel.set).start()
        t0 = time.monotonic()
        assert not sp.append(1, 0, 1, b"x" * 3000, block=True, cancel=cancel)
        assert time.monotonic() - t0 < 5 and sp.drop_counts() == {}


def test_clear_forgets_every_frame_and_numbers_on_from_the_given_seq(tmp_path):
    with Spool(tmp_path) as sp:
        for s in range(10, 15):
            assert sp.append(s, 0, s, b"x")
        assert sp.next(timeout=0).seq == 10
        assert sp.clear(through=7) == 5
        assert sp.depth == (0, 0) and sp.next(timeout=0) is None and sp.drop_counts() == {}
        assert sp.append(8, 0, 8, b"y")
    with Spool(tmp_path) as sp:
        assert sp.watermark == 7 and [sp.next(timeout=0).seq, sp.next(timeout=0)] == [8, None]
