"""Store on a real SQLite file and, when INFOCUT_TEST_PG_URL is set (see .ci/postgres.sh), real PostgreSQL."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cloud.config import AlertConfig
from cloud.store import Link, Recorded, Store

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PG_URL = os.environ.get("INFOCUT_TEST_PG_URL")

MakeStore = Callable[..., Store]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'infocut.db'}"
        return
    if not PG_URL:
        pytest.skip(
            "PostgreSQL variant: set INFOCUT_TEST_PG_URL (`export INFOCUT_TEST_PG_URL=$(.ci/postgres.sh)`)"
        )
    # A fresh schema per test: tests stay independent and can run next to each other on one database.
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def make_store(db_url: str) -> Iterator[MakeStore]:
    """Opens stores on the test database (several = restarts); closes them all at the end."""
    opened: list[Store] = []

    def make(close_after: int = 3, open_after: int = 1) -> Store:
        store = Store(db_url, AlertConfig(close_after=close_after, open_after=open_after))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def feed(store: Store, camera: str, pattern: str, start: int = 0) -> list[Recorded]:
    """Records one frame per character of pattern ('A' anomalous, '.' normal) from seq `start` on."""
    return [
        store.record(camera, seq, at(seq), 0.9 if c == "A" else 0.1, c == "A", 1000 + seq)
        for seq, c in enumerate(pattern, start)
    ]


def test_record_stores_score_and_camera_stats(make_store: MakeStore) -> None:
    store = make_store()
    before = datetime.now(UTC)
    r = store.record("cam-1", 7, at(7), 0.25, False, 1200)
    store.record("cam-1", 8, at(8), 0.75, False, 800)
    store.record("cam-é", 0, at(0), 0.5, False, 10)
    after = datetime.now(UTC)

    assert r == Recorded(duplicate=False, score=0.25, is_anomaly=False)
    items, total = store.list_scores("cam-1")
    assert total == 2
    assert [(s.seq, s.capture_time, s.score, s.is_anomaly, s.nbytes) for s in items] == [
        (8, at(8), 0.75, False, 800),
        (7, at(7), 0.25, False, 1200),
    ]
    assert all(s.capture_time.tzinfo is not None and before <= s.received_time <= after for s in items)

    cams = {c.camera_id: c for c in store.list_cameras()}
    assert set(cams) == {"cam-1", "cam-é"}
    cam = cams["cam-1"]
    assert (cam.frames, cam.mean_bytes_per_frame, cam.open_alert) == (2, 1000.0, None)
    assert before <= cam.first_seen <= cam.last_seen <= after
    assert cam.first_seen.utcoffset() == timedelta(0)


def test_capture_time_in_any_offset_is_stored_as_utc(make_store: MakeStore) -> None:
    store = make_store()
    plus2 = timezone(timedelta(hours=2))
    store.record("cam", 0, datetime(2024, 5, 1, 14, 0, tzinfo=plus2), 0.1, False, 1)
    (score,), _ = store.list_scores("cam")
    assert score.capture_time == T0 and score.capture_time.tzinfo == UTC


def test_record_accepts_numpy_scalars(make_store: MakeStore) -> None:
    store = make_store()
    r = store.record("cam", np.int64(3), T0, np.float32(0.5), np.bool_(True), np.int32(10))
    assert (type(r.score), type(r.is_anomaly), r.alert_opened is not None) == (float, bool, True)
    (score,), _ = store.list_scores("cam")
    assert (score.seq, score.score, score.is_anomaly, score.nbytes) == (3, 0.5, True, 10)


def test_duplicate_returns_stored_result_and_changes_nothing(make_store: MakeStore) -> None:
    store = make_store()
    first = store.record("cam", 1, at(1), 0.9, True, 500)
    snapshot = (store.list_scores("cam"), store.list_cameras(), store.list_alerts())

    again = store.record("cam", 1, at(99), 0.05, False, 9999)

    assert first.alert_opened is not None and not first.duplicate
    assert (again.duplicate, again.score, again.is_anomaly) == (True, 0.9, True)
    assert again.alert_opened is None and again.alert_closed is None
    assert (store.list_scores("cam"), store.list_cameras(), store.list_alerts()) == snapshot


def test_alert_opens_extends_and_closes_after_consecutive_normal_frames(make_store: MakeStore) -> None:
    store = make_store(close_after=3)
    out = feed(store, "cam", ".A.A..A...")
    #                       0123456789
    opened = out[1].alert_opened
    assert opened is not None and opened.state == "open"
    assert (opened.start_seq, opened.end_seq, opened.frames, opened.start_time) == (1, 1, 1, at(1))
    assert all(r.alert_opened is None for i, r in enumerate(out) if i != 1)
    assert [i for i, r in enumerate(out) if r.alert_closed] == [9]  # 2 normals (4, 5) do not close

    closed = out[9].alert_closed
    assert closed is not None
    expected = (opened.id, "closed", 1, 6, 3)
    assert (closed.id, closed.state, closed.start_seq, closed.end_seq, closed.frames) == expected
    assert closed.end_time == at(6)
    assert store.get_alert(opened.id) == closed
    assert store.list_cameras()[0].open_alert is None

    reopened = feed(store, "cam", "A", start=10)[0].alert_opened
    assert reopened is not None and reopened.id != opened.id and reopened.start_seq == 10
    assert store.list_cameras()[0].open_alert == reopened.id


def test_alert_peak_follows_the_highest_score(make_store: MakeStore) -> None:
    store = make_store()
    for seq, score in enumerate([0.6, 0.95, 0.7]):
        store.record("cam", seq, at(seq), score, True, 1)
    (alert,), total = store.list_alerts()
    assert total == 1
    assert (alert.peak_score, alert.peak_seq, alert.frames, alert.state) == (0.95, 1, 3, "open")


def test_restart_continues_the_open_alert(make_store: MakeStore) -> None:
    first = make_store(close_after=3)
    opened = feed(first, "cam", "A..")[0].alert_opened
    assert opened is not None
    first.close()

    second = make_store(close_after=3)  # a new process on the same database
    closed = feed(second, "cam", ".", start=3)[0].alert_closed
    assert closed is not None and closed.id == opened.id and closed.end_seq == 0
    assert second.list_alerts()[1] == 1


def test_restart_extends_rather_than_reopens(make_store: MakeStore) -> None:
    first = make_store(close_after=3)
    opened = feed(first, "cam", "A.")[0].alert_opened
    first.close()

    second = make_store(close_after=3)
    out = feed(second, "cam", "A..", start=2)
    assert all(r.alert_opened is None and r.alert_closed is None for r in out)
    (alert,), total = second.list_alerts()
    assert (total, alert.id, alert.state, alert.end_seq, alert.frames) == (1, opened.id, "open", 2, 2)


def test_late_frame_is_stored_but_does_not_move_alerts(make_store: MakeStore) -> None:
    store = make_store(close_after=3)
    feed(store, "cam", "..A..", start=10)  # alert opened at 12, two normals after it
    late = store.record("cam", 5, at(5), 0.99, True, 1)
    assert not late.duplicate and late.alert_opened is None
    (alert,), _ = store.list_alerts()
    assert (alert.start_seq, alert.end_seq, alert.frames, alert.peak_score) == (12, 12, 1, 0.9)

    closed = feed(store, "cam", ".", start=15)[0].alert_closed
    assert closed is not None and closed.id == alert.id

    assert store.record("cam", 6, at(6), 0.99, True, 1).alert_opened is None
    assert store.list_alerts()[1] == 1
    assert store.list_cameras()[0].frames == 8


def test_list_alerts_filters_and_pagination(make_store: MakeStore) -> None:
    store = make_store(close_after=2)
    # cam-a: alert on 10-11 (peak .9), alert on 30 (peak .6); cam-b: alert open since 20 (peak .8).
    for seq in range(40):
        score = 0.9 if seq in (10, 11) else 0.6 if seq == 30 else 0.1
        store.record("cam-a", seq, at(seq), score, score > 0.5, 1)
    for seq in range(15, 25):
        store.record("cam-b", seq, at(seq), 0.8 if seq >= 20 else 0.1, seq >= 20, 1)

    items, total = store.list_alerts()
    assert total == 3
    assert [(a.camera_id, a.start_seq, a.state) for a in items] == [
        ("cam-a", 30, "closed"),
        ("cam-b", 20, "open"),
        ("cam-a", 10, "closed"),
    ]
    assert [a.start_seq for a in store.list_alerts(camera_id="cam-a")[0]] == [30, 10]
    assert store.list_alerts(camera_id="nobody") == ([], 0)
    assert [a.start_seq for a in store.list_alerts(min_score=0.8)[0]] == [20, 10]
    # Windows select alerts that overlap them; the open alert overlaps every later window.
    assert [a.start_seq for a in store.list_alerts(since=at(11))[0]] == [30, 20, 10]
    assert [a.start_seq for a in store.list_alerts(since=at(12))[0]] == [30, 20]
    assert [a.start_seq for a in store.list_alerts(since=at(100))[0]] == [20]
    assert [a.start_seq for a in store.list_alerts(until=at(20))[0]] == [10]
    assert [a.start_seq for a in store.list_alerts(since=at(12), until=at(30))[0]] == [20]

    page, total = store.list_alerts(limit=2, offset=1)
    assert total == 3 and [a.start_seq for a in page] == [20, 10]
    assert store.list_alerts(limit=2, offset=3) == ([], 3)
    assert store.get_alert(items[0].id) == items[0]
    assert store.get_alert(10_000) is None


def test_list_scores_filters_and_pagination(make_store: MakeStore) -> None:
    store = make_store()
    feed(store, "cam-a", "." * 20)
    feed(store, "cam-b", "." * 5)
    items, total = store.list_scores("cam-a", since=at(5), until=at(15), limit=4, offset=2)
    assert total == 10 and [s.seq for s in items] == [12, 11, 10, 9]
    assert {s.camera_id for s in items} == {"cam-a"}
    assert store.list_scores("cam-b")[1] == 5
    assert store.list_scores("nobody") == ([], 0)
    with pytest.raises(ValueError, match="naive"):
        store.list_scores("cam-a", since=datetime(2024, 5, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capture_time": datetime(2024, 5, 1, 12)}, "naive"),
        ({"score": float("nan")}, "finite"),
        ({"camera_id": ""}, "camera_id"),
        ({"camera_id": "x" * 129}, "camera_id"),
        ({"seq": -1}, "seq"),
        ({"nbytes": -1}, "nbytes"),
    ],
)
def test_record_rejects_what_it_cannot_store(make_store: MakeStore, kwargs: dict, match: str) -> None:
    store = make_store()
    frame = {"camera_id": "cam", "seq": 0, "capture_time": T0, "score": 0.5, "is_anomaly": False, "nbytes": 1}
    with pytest.raises(ValueError, match=match):
        store.record(**{**frame, **kwargs})
    assert store.list_cameras() == []


def test_concurrent_writers_store_each_frame_exactly_once(make_store: MakeStore) -> None:
    """Edge retries can race the original: every (camera, seq) is stored once and alerts stay consistent."""
    store = make_store(close_after=2)
    results: list[list] = [[] for _ in range(6)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for seq in range(40):
                anomalous = (seq // 5) % 2 == 1
                results[k].append(store.record("cam", seq, at(seq), 0.9 if anomalous else 0.1, anomalous, 10))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sum(not r.duplicate for rs in results for r in rs) == 40
    (cam,) = store.list_cameras()
    assert (cam.frames, cam.mean_bytes_per_frame) == (40, 10.0)
    assert store.list_scores("cam", limit=1000)[1] == 40
    alerts, _ = store.list_alerts(limit=1000)
    assert sum(a.state == "open" for a in alerts) <= 1


def test_ping_and_unsupported_url(make_store: MakeStore) -> None:
    assert make_store().ping() is True
    with pytest.raises(ValueError, match="unsupported database"):
        Store("mysql://u:p@localhost/db")


def test_open_after_ignores_isolated_anomalous_frames(make_store: MakeStore) -> None:
    """With open_after=3 a lone or paired anomalous frame raises nothing; three in a row open an alert
    that starts at the first of them, and a restarted store keeps counting the run from the database."""
    store = make_store(close_after=2, open_after=3)
    out = feed(store, "cam", "A.AA..")
    assert all(r.alert_opened is None for r in out)
    assert store.list_alerts()[1] == 0
    out = feed(store, "cam", "AA", start=6)
    restarted = make_store(close_after=2, open_after=3)
    opened = feed(restarted, "cam", "A", start=8)[0].alert_opened
    assert all(r.alert_opened is None for r in out)
    assert opened is not None and (opened.start_seq, opened.end_seq, opened.frames) == (6, 8, 3)
    closed = feed(restarted, "cam", "..", start=9)[-1].alert_closed
    assert closed is not None and closed.id == opened.id


def test_the_reference_chain_is_stored_with_the_frames_and_survives_a_restart(make_store: MakeStore) -> None:
    store = make_store()
    assert store.reference_chain("cam") == []
    store.record("cam", 0, at(0), 0.1, False, 10, link=Link(b"key-0", starts=True))
    store.record("cam", 2, at(2), 0.1, False, 10, link=Link(b"delta-2"))
    store.record("cam", 1, at(1), 0.1, False, 10, link=Link(b"delta-1"))  # late: not a link of the chain
    store.record("cam", 2, at(2), 0.1, False, 10, link=Link(b"resent"))  # duplicate: changes nothing
    store.record("cam", 3, at(3), 0.1, False, 10, link=Link(b"delta-3"))
    store.record("other", 5, at(5), 0.1, False, 10)  # no link given: none stored
    assert [(x.seq, x.data, x.checkpoint) for x in store.reference_chain("cam")] == [
        (0, b"key-0", False), (2, b"delta-2", False), (3, b"delta-3", False)]
    assert store.reference_chain("other") == []
    store.record("cam", 4, at(4), 0.1, False, 10, link=Link(b"codes-4", checkpoint=True, starts=True))
    store.record("cam", 5, at(5), 0.1, False, 10, link=Link(b"delta-5"))
    store.close()
    assert [(x.seq, x.data, x.checkpoint) for x in make_store().reference_chain("cam")] == [
        (4, b"codes-4", True), (5, b"delta-5", False)]  # a new start drops the links before it


