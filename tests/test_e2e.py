"""The real thing on loopback: `infocut cloud` and `infocut edge` as separate processes over gRPC.

Checks the foundation's promises: every frame scored exactly once, the same scores as the offline
head -> codec -> tail pipeline, alerts on labeled anomalies, a bad frame rejected alone, a wrong
artifact refused at the handshake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from codec import encode_frame
from infocut.settings import DEMO_ARTIFACT, REPO
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc
from tests.conftest import free_port, needs_shared, skip_without_shared

N_FRAMES = 120  # Ped2 test video 01: frames 61.. (1-based) are anomalous, so 60 normal + 60 anomalous
ARTIFACT_HEADER = "x-infocut-artifact-id"
OPEN_AFTER = 3  # `infocut cloud --open-after` default


def get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def infocut(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infocut", *args], cwd=REPO, **kw)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """A cloud node serving the demo artifact on free loopback ports, with a fresh SQLite file."""
    db = tmp_path_factory.mktemp("cloud") / "infocut.db"
    grpc_port, http_port = free_port(), free_port()
    proc = infocut(
        "cloud", "--artifact", str(DEMO_ARTIFACT), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        "--db", f"sqlite:///{db}", "--host", "127.0.0.1",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"cloud exited: {proc.stdout.read()}"
        try:
            get(base, "/readyz")
            break
        except OSError:
            assert time.monotonic() < deadline, "cloud not ready after 60 s"
            time.sleep(0.2)
    yield {"grpc": f"127.0.0.1:{grpc_port}", "http": base, "proc": proc}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("cloud did not stop on SIGINT")


@pytest.fixture(scope="module")
def stub(cloud):
    with grpc.insecure_channel(cloud["grpc"]) as channel:
        yield pb_grpc.IngestStub(channel)


@pytest.fixture(scope="module")
def ped2_video01() -> Path:
    skip_without_shared()
    from infocut.ped2 import videos

    return videos("testing")["01"][0].parent


def all_scores(base: str, camera: str) -> list[dict]:
    items, offset = [], 0
    while True:
        page = get(base, f"/scores?camera_id={camera}&limit=1000&offset={offset}")
        items += page["items"]
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return sorted(items, key=lambda s: s["seq"])


def frame_msg(artifact, seq: int, tensor: bytes, camera: str = "grpc-client") -> pb.Frame:
    return pb.Frame(camera_id=camera, seq=seq, capture_time_us=int(time.time() * 1e6),
                    artifact_id=artifact.id, tensor=tensor)


def summary(out: str) -> dict[str, str]:
    """The counters of the edge's last `event=summary` log line."""
    line = [ln for ln in out.splitlines() if "event=summary" in ln][-1]
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


@needs_shared
def test_edge_to_cloud_scores_every_frame_once_and_matches_offline(cloud, ped2_video01, demo_artifact, tmp_path):
    camera = "ped2-01"
    edge = infocut(
        "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(ped2_video01), "--cloud", cloud["grpc"],
        "--camera-id", camera, "--max-frames", str(N_FRAMES), "--spool", str(tmp_path / "spool"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = edge.communicate(timeout=240)
    assert edge.returncode == 0, out
    counts = summary(out)
    assert (counts["captured"], counts["acked"], counts["rejected"], counts["dropped"]) == (
        str(N_FRAMES), str(N_FRAMES), "0", "0"), counts

    scores = all_scores(cloud["http"], camera)
    assert [s["seq"] for s in scores] == list(range(N_FRAMES)), "every frame stored exactly once, no gap"
    cams = {c["camera_id"]: c for c in get(cloud["http"], "/cameras")}
    assert cams[camera]["frames"] == N_FRAMES

    # The same artifact, offline in one process, on the same frames decoded the same way.
    from edge.preprocess import to_input
    from edge.source import open_source
    from infocut.pipeline import Pipeline

    with open_source(str(ped2_video01)) as src:
        images = [to_input(c.image, demo_artifact.input_size) for _, c in zip(range(N_FRAMES), src)]
    offline = np.array(Pipeline(demo_artifact).run(images).scores)
    online = np.array([s["score"] for s in scores])
    np.testing.assert_allclose(online, offline, rtol=1e-5)

    # Alerts (the cloud opens one on OPEN_AFTER frames in a row over the threshold): every such run lies
    # inside an alert, there is one, and every alert starts on a labeled-anomalous frame.
    from infocut.ped2 import labels

    y = labels()["01"][:N_FRAMES]
    assert all(s["is_anomaly"] == (s["score"] >= demo_artifact.threshold) for s in scores)
    flags = [s["is_anomaly"] for s in scores]
    run_ends = [i for i in range(OPEN_AFTER - 1, N_FRAMES) if all(flags[i - OPEN_AFTER + 1 : i + 1])]
    alerts = get(cloud["http"], f"/alerts?camera_id={camera}&limit=1000")["items"]
    assert run_ends and alerts, "no alert on the anomalous half"
    for seq in run_ends:
        assert any(a["start_seq"] <= seq <= a["end_seq"] for a in alerts), f"run ending at {seq}: no alert"
    assert all(y[a["start_seq"]] for a in alerts), [(a["start_seq"], a["end_seq"]) for a in alerts]
    assert sum(y[np.array(flags)]) > 0.5 * y.sum(), "most anomalous frames are over the threshold"


def test_bad_frames_are_rejected_alone(stub, demo_artifact):
    shape = (1, *demo_artifact.cut_shapes[0])
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**demo_artifact.bits, size=shape, dtype=np.uint8)
    models = demo_artifact.entropy_models
    good = encode_frame([codes], demo_artifact.bits, demo_artifact.coder, models=models)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10
    wrong_shape = encode_frame([codes[:, :, :-1]], demo_artifact.bits, demo_artifact.coder, models=models)
    wrong_bits = encode_frame([codes >> 1], demo_artifact.bits - 1, "zstd")  # the artifact's tables are for its bits
    tensors = [good, bytes(flipped), good[:-7], wrong_shape, wrong_bits, b"", good]
    msgs = [frame_msg(demo_artifact, seq, t, camera="bad-frames") for seq, t in enumerate(tensors)]
    results = list(stub.Stream(iter(msgs), metadata=[(ARTIFACT_HEADER, demo_artifact.id)], timeout=60))

    assert [r.seq for r in results] == list(range(len(tensors)))
    codes_ = [r.status.code for r in results]
    assert codes_[0] == 0 and codes_[-1] == 0, "good frames around the bad ones are scored"
    assert all(c == grpc.StatusCode.INVALID_ARGUMENT.value[0] for c in codes_[1:-1]), codes_
    messages = [r.status.message for r in results[1:-1]]
    assert "CRC32" in messages[0]
    assert "truncated" in messages[1]
    assert "wrong shape" in messages[2]
    assert "bits" in messages[3]
    assert all(m.startswith("corrupt frame") for m in messages)
    assert np.isfinite(results[-1].score)


def test_duplicate_frame_returns_stored_result(stub, demo_artifact):
    codes = np.zeros((1, *demo_artifact.cut_shapes[0]), np.uint8)
    data = encode_frame([codes], demo_artifact.bits, demo_artifact.coder, models=demo_artifact.entropy_models)
    frame = frame_msg(demo_artifact, 7, data, "dup")
    first = stub.Submit(frame, timeout=30)
    again = stub.Submit(frame, timeout=30)
    assert first.status.code == 0 and not first.duplicate
    assert again.duplicate and again.score == first.score and again.is_anomaly == first.is_anomaly


def test_mismatched_artifact_is_refused_at_handshake(stub, demo_artifact):
    with pytest.raises(grpc.RpcError) as err:
        stub.Handshake(pb.HandshakeRequest(camera_id="x", artifact_id="0" * 32), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "artifact mismatch" in err.value.details() and demo_artifact.id in err.value.details()

    with pytest.raises(grpc.RpcError) as err:
        list(stub.Stream(iter([]), metadata=[(ARTIFACT_HEADER, "0" * 32)], timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    reply = stub.Handshake(pb.HandshakeRequest(camera_id="x", artifact_id=demo_artifact.id), timeout=10)
    assert reply.artifact_id == demo_artifact.id and reply.last_seq == -1


def test_edge_with_another_artifact_exits_with_a_clear_message(cloud, tmp_path, demo_artifact):
    other = tmp_path / "other"
    other.mkdir()
    for f in DEMO_ARTIFACT.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["scorer"]["threshold"] += 1.0
    from infocut.artifact import write_manifest

    write_manifest(other, manifest)
    edge = infocut(
        "edge", "--artifact", str(other), "--source", str(REPO / "assets" / "ped2_test01.mp4"),
        "--cloud", cloud["grpc"], "--camera-id", "other", "--spool", str(tmp_path / "spool"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = edge.communicate(timeout=60)
    assert edge.returncode == 2, out
    assert "artifact mismatch" in out


def test_health_and_reflection(cloud):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(cloud["grpc"]) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="infocut.v1.Ingest"), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([req]), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
        assert "infocut.v1.Ingest" in names and "grpc.health.v1.Health" in names


def test_metrics_count_frames_and_errors(cloud):
    with urllib.request.urlopen(cloud["http"] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "infocut_frames_total" in text and "infocut_frame_errors_total" in text


def test_demo_raises_alerts_on_the_bundled_clip(tmp_path):
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "infocut", "demo", "--fast", "--exit-when-done", "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--db", f"sqlite:///{tmp_path / 'demo.db'}"],
        cwd=REPO, capture_output=True, text=True, timeout=240, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("alert ")]
    assert lines, proc.stdout
    labels = json.loads((REPO / "assets" / "ped2_test01.labels.json").read_text())
    first_anomalous = labels["anomalous"][0][0] - 1  # 1-based -> seq
    starts = [int(ln.split("frames ")[1].split("..")[0]) for ln in lines]
    assert all(s >= first_anomalous for s in starts), "an alert on the clip's normal part"
    assert "180 frames scored" in proc.stdout
