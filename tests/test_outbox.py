"""edge.outbox: frames reach the link from memory while it keeps up, the spool only past that, and
whatever the mix, the link sees them in seq order and a restart numbers on after them."""

from __future__ import annotations

from edge.outbox import Outbox
from edge.spool import Spool

DATA = b"x" * 1000


def put(box: Outbox, seqs) -> None:
    for s in seqs:
        assert box.put(s, s * 1000, s, DATA)


def drain(box: Outbox) -> list[int]:
    out = []
    while (rec := box.next(timeout=0)) is not None:
        out.append(rec.seq)
        assert box.ack(rec.seq)
    return out


def segment_bytes(spool: Spool) -> int:
    return sum(p.stat().st_size for p in spool.dir.glob("*.seg"))


def test_a_link_that_keeps_up_writes_nothing_to_disk(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=4)
    for s in range(100):
        put(box, [s])
        assert drain(box) == [s]
    assert segment_bytes(box.spool) == 0 and box.depth == (0, 0)
    box.close()
    assert Spool(tmp_path).last_seq == 99, "the numbering survives a restart through the ack watermark"


def test_overflow_goes_to_the_spool_and_everything_comes_out_in_order(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=4)
    put(box, range(10))
    assert box.in_memory == 4 and box.spool.depth[0] == 6
    first = box.next(timeout=0)
    assert first.seq == 0
    put(box, [10])  # memory has room again, but the spool still holds frames: it goes after them
    assert box.spool.depth[0] == 7
    assert box.ack(0)
    assert drain(box) == list(range(1, 11))
    put(box, [11])  # the spool is empty again: back to memory
    assert box.in_memory == 1 and box.spool.depth[0] == 0
    assert drain(box) == [11] and box.depth[0] == 0


def test_rewind_sends_the_frames_in_flight_again_in_order(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=3)
    put(box, range(6))
    sent = [box.next(timeout=0).seq for _ in range(5)]
    assert sent == [0, 1, 2, 3, 4]
    assert box.ack(0)
    assert box.rewind() == 4
    assert drain(box) == [1, 2, 3, 4, 5]


def test_limit_counts_frames_in_flight_from_memory_and_spool(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=2)
    put(box, range(5))
    got = [box.next(timeout=0, limit=3) for _ in range(4)]
    assert [r.seq for r in got[:3]] == [0, 1, 2] and got[3] is None
    assert box.ack(1)
    assert box.next(timeout=0, limit=3).seq == 3


def test_always_mode_spools_every_frame(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=8, mode="always")
    put(box, range(3))
    assert box.in_memory == 0 and box.spool.depth[0] == 3 and segment_bytes(box.spool) > 3 * len(DATA)
    assert drain(box) == [0, 1, 2]


def test_a_clean_stop_keeps_memory_frames_in_the_spool(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=8)
    put(box, range(5))
    assert box.next(timeout=0).seq == 0 and box.ack(0)
    assert box.next(timeout=0).seq == 1  # in flight when the edge stops
    box.close()
    assert box.drop_counts() == {}
    again = Outbox(Spool(tmp_path), memory_frames=8)
    assert again.spool.depth[0] == 4 and drain(again) == [1, 2, 3, 4]


def test_memory_frames_behind_spooled_ones_are_counted_when_lost_on_stop(tmp_path):
    box = Outbox(Spool(tmp_path), memory_frames=2)
    put(box, range(4))  # 0, 1 in memory; 2, 3 spooled
    box.close()
    assert box.drop_counts()["shutdown"] == 2
    assert Outbox(Spool(tmp_path), memory_frames=2).spool.depth[0] == 2
