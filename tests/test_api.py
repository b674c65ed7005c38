"""REST API over a real SQLite store, through FastAPI's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from cloud.api import create_app
from cloud.config import AlertConfig
from cloud.metrics import FRAMES
from cloud.store import AlertOut, Store

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(t: datetime) -> str:
    return t.isoformat()


def parse(s: str) -> datetime:
    return datetime.fromisoformat(s)


@dataclass
class Api:
    client: TestClient
    store: Store
    ready: list[bool]  # what the node's ready() answers; mutable so a test can flip it


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One seeded store for the module: the API only reads it."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('api') / 'api.db'}", AlertConfig(close_after=2))
    # cam-a: closed alert on seqs 10-11 (peak .9), open alert from 30 (peak .6); cam-b: normal frames only.
    for seq in range(32):
        anomalous = seq in (10, 11, 30, 31)
        score = 0.9 if seq in (10, 11) else 0.6 if anomalous else 0.1
        store.record("cam-a", seq, at(seq), score, anomalous, 100 + seq)
    for seq in range(4):
        store.record("cam-b", seq, at(seq), 0.2, False, 50)
    yield store
    store.close()


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    ready = [True]
    with TestClient(create_app(store, lambda: ready[0])) as client:
        yield Api(client, store, ready)


def get_ok(api: Api, url: str, **params) -> dict | list:
    r = api.client.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_healthz_is_always_ok(api: Api) -> None:
    api.ready[0] = False
    assert get_ok(api, "/healthz")["status"] == "ok"


def test_readyz_follows_ready_and_the_database(api: Api) -> None:
    body = get_ok(api, "/readyz")
    assert body == {"status": "ready", "checks": {"node": True, "database": True}}
    api.ready[0] = False
    r = api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not ready", "checks": {"node": False, "database": True}}


def test_cameras(api: Api) -> None:
    cams = get_ok(api, "/cameras")
    assert [c["camera_id"] for c in cams] == ["cam-a", "cam-b"]
    a, b = cams
    open_alert = api.store.list_alerts(camera_id="cam-a")[0][0]
    assert (a["frames"], a["mean_bytes_per_frame"], a["open_alert"]) == (32, 115.5, open_alert.id)
    assert (b["frames"], b["mean_bytes_per_frame"], b["open_alert"]) == (4, 50.0, None)
    assert parse(a["first_seen"]) <= parse(a["last_seen"])
    assert parse(a["first_seen"]).utcoffset() == timedelta(0)


def test_list_alerts(api: Api) -> None:
    body = get_ok(api, "/alerts")
    assert (body["total"], body["limit"], body["offset"]) == (2, 100, 0)
    newest, oldest = body["items"]
    assert (newest["state"], newest["start_seq"], newest["end_seq"], newest["frames"]) == ("open", 30, 31, 2)
    assert (oldest["state"], oldest["start_seq"], oldest["end_seq"]) == ("closed", 10, 11)
    assert oldest["peak_score"] == 0.9
    assert parse(oldest["start_time"]) == at(10) and parse(oldest["end_time"]) == at(11)
    assert set(newest) == set(AlertOut.model_fields)


@pytest.mark.parametrize(
    ("params", "start_seqs"),
    [
        ({"camera_id": "cam-a"}, [30, 10]),
        ({"camera_id": "cam-b"}, []),
        ({"min_score": 0.8}, [10]),
        ({"since": iso(at(12))}, [30]),
        ({"until": iso(at(30))}, [10]),
        ({"since": iso(at(11)), "until": iso(at(31))}, [30, 10]),
        ({"since": "2024-05-01T14:00:11+02:00"}, [30, 10]),  # any offset; same instant as at(11)
        ({"since": "2024-05-01T12:00:12"}, [30]),  # no offset: UTC
        ({"limit": 1, "offset": 1}, [10]),
        ({"offset": 5}, []),
    ],
)
def test_alert_filters_and_pagination(api: Api, params: dict, start_seqs: list[int]) -> None:
    body = get_ok(api, "/alerts", **params)
    assert [a["start_seq"] for a in body["items"]] == start_seqs
    if "limit" in params or "offset" in params:
        expected = (2, params.get("limit", 100), params["offset"])
        assert (body["total"], body["limit"], body["offset"]) == expected
    else:
        assert body["total"] == len(start_seqs)


def test_get_alert_and_404(api: Api) -> None:
    first = get_ok(api, "/alerts")["items"][0]
    assert get_ok(api, f"/alerts/{first['id']}") == first
    r = api.client.get("/alerts/999")
    assert r.status_code == 404 and "999" in r.json()["detail"]


def test_scores(api: Api) -> None:
    body = get_ok(api, "/scores", camera_id="cam-a", since=iso(at(5)), until=iso(at(15)), limit=3, offset=1)
    assert (body["total"], body["limit"], body["offset"]) == (10, 3, 1)
    assert [s["seq"] for s in body["items"]] == [13, 12, 11]
    item = body["items"][2]
    assert (item["camera_id"], item["score"], item["is_anomaly"], item["nbytes"]) == ("cam-a", 0.9, True, 111)
    assert parse(item["capture_time"]) == at(11)
    assert parse(item["received_time"]) >= parse(item["capture_time"])
    assert get_ok(api, "/scores", camera_id="cam-b")["total"] == 4
    assert get_ok(api, "/scores", camera_id="nobody") == {"items": [], "total": 0, "limit": 100, "offset": 0}


@pytest.mark.parametrize(
    "url",
    [
        "/alerts?limit=0",
        "/alerts?limit=1001",
        "/alerts?offset=-1",
        "/alerts?since=notadate",
        "/alerts?until=notadate",
        "/alerts?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z",
        "/alerts?since=9999-12-31T23:59:59-12:00",
        "/alerts?min_score=nan",
        "/alerts?min_score=high",
        "/alerts/abc",
        "/alerts/0",
        "/alerts/99999999999999999999999",
        "/scores",
        "/scores?camera_id=",
        "/scores?camera_id=cam-a&limit=0",
        "/scores?camera_id=cam-a&since=notadate",
    ],
)
def test_bad_params_are_422(api: Api, url: str) -> None:
    r = api.client.get(url)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


def test_openapi_documents_every_route(api: Api) -> None:
    spec = get_ok(api, "/openapi.json")
    routes = {"/alerts", "/alerts/{alert_id}", "/scores", "/cameras", "/healthz", "/readyz", "/metrics"}
    assert routes <= set(spec["paths"])
    assert {"AlertOut", "AlertPage", "ScoreOut", "ScorePage", "CameraOut", "Status"} <= set(
        spec["components"]["schemas"]
    )
    params = {p["name"] for p in spec["paths"]["/alerts"]["get"]["parameters"]}
    assert params == {"camera_id", "since", "until", "min_score", "limit", "offset"}
    assert api.client.get("/docs").status_code == 200


def test_metrics_is_prometheus_text(api: Api) -> None:
    before = REGISTRY.get_sample_value("infocut_frames_total", {"camera_id": "cam-metrics"}) or 0.0
    FRAMES.labels(camera_id="cam-metrics").inc(3)
    r = api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    names = (
        "frames_total frame_errors_total duplicate_frames_total frame_bytes tail_seconds"
        " capture_to_score_seconds alerts_opened_total active_streams"
    )
    for name in names.split():
        assert f"# TYPE infocut_{name} " in text
    assert f'infocut_frames_total{{camera_id="cam-metrics"}} {before + 3}' in text
