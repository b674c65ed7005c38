"""The edge <-> cloud link in earnest: TLS, mutual TLS and per-camera bearer tokens, between real
`infocut cloud` processes and real gRPC clients (and `infocut edge`) over loopback sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec import encode_frame
from infocut import tls
from infocut.settings import DEMO_ARTIFACT, REPO
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc
from tests.conftest import free_port, stop_process
from tests.pki import make_pki

CLIP = REPO / "assets" / "ped2_test01.mp4"
TOKEN_A, TOKEN_B = "token-of-cam-a-0123456789", "token-of-cam-b-9876543210"


def start_cloud(tmp: Path, *extra: str) -> tuple[subprocess.Popen, int, Path]:
    """`infocut cloud` on loopback with `extra` flags; returns once its port accepts TCP connections."""
    port, db = free_port(), tmp / "infocut.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infocut", "cloud", "--artifact", str(DEMO_ARTIFACT), "--grpc-port", str(port),
         "--http-port", str(free_port()), "--db", f"sqlite:///{db}", "--host", "127.0.0.1", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"the cloud exited at start: {proc.stdout.read()}"
        try:  # TCP is enough: a TLS port refuses a plaintext health check, but it is listening
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port, db
        except OSError:
            assert time.monotonic() < deadline, "cloud not listening after 90 s"
            time.sleep(0.3)


def handshake(channel: grpc.Channel, camera: str, token: str | None = None, artifact_id: str | None = None):
    md = [("authorization", f"Bearer {token}")] if token else []
    return pb_grpc.IngestStub(channel).Handshake(
        pb.HandshakeRequest(camera_id=camera, artifact_id=artifact_id or demo_id()), timeout=10, metadata=md)


def demo_id() -> str:
    from infocut.artifact import load_artifact

    return load_artifact(DEMO_ARTIFACT).id


def frame(camera: str, seq: int, tensor: bytes) -> pb.Frame:
    return pb.Frame(camera_id=camera, seq=seq, capture_time_us=int(time.time() * 1e6), artifact_id=demo_id(),
                    tensor=tensor)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tensor() -> bytes:
    """One real encoded frame of the demo artifact (the head on the clip's first frame)."""
    from edge.head import Head
    from edge.preprocess import to_input
    from edge.source import open_source
    from infocut.artifact import load_artifact

    art = load_artifact(DEMO_ARTIFACT)
    with open_source(str(CLIP)) as src:
        image = to_input(next(iter(src)).image, art.input_size)
    return encode_frame(Head(art, threads=1)(image[None]), art.bits, art.coder, models=art.entropy_models)


@pytest.fixture(scope="module")
def tls_cloud(pki, tmp_path_factory):
    """A cloud serving TLS (no client certificates) with a token table of two cameras (one as sha256)."""
    tmp = tmp_path_factory.mktemp("tls-cloud")
    table = tmp / "tokens.yaml"
    table.write_text(f"cam-a: sha256:{hashlib.sha256(TOKEN_A.encode()).hexdigest()}\ncam-b: {TOKEN_B}\n")
    proc, port, db = start_cloud(tmp, "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]),
                                 "--tokens", str(table))
    yield {"addr": f"localhost:{port}", "port": port, "db": db, "proc": proc}
    out = stop_process(proc)
    assert TOKEN_A not in out and TOKEN_B not in out, "no token is ever logged"


@pytest.fixture(scope="module")
def mtls_cloud(pki, tmp_path_factory):
    """A cloud requiring client certificates signed by the test CA; no token table (open, with a warning)."""
    tmp = tmp_path_factory.mktemp("mtls-cloud")
    proc, port, db = start_cloud(tmp, "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]),
                                 "--tls-client-ca", str(pki["ca.pem"]))
    yield {"addr": f"127.0.0.1:{port}", "port": port, "db": db, "proc": proc}
    out = stop_process(proc)
    assert out.count("no token table") == 1, out


def secure(addr: str, pki, client_cert: bool = False) -> grpc.Channel:
    creds = tls.channel_credentials(pki["ca.pem"], *((pki["client.pem"], pki["client.key"]) if client_cert else ()))
    return grpc.secure_channel(addr, creds)


# -- TLS --------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_edge_streams_over_tls_with_its_token(tls_cloud, pki, tmp_path):
    (tmp_path / "token").write_text(TOKEN_A + "\n")
    edge = subprocess.run(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(CLIP),
         "--cloud", tls_cloud["addr"], "--camera-id", "cam-a", "--spool", str(tmp_path / "spool"),
         "--max-frames", "4", "--tls-ca", str(pki["ca.pem"]), "--token-file", str(tmp_path / "token")],
        cwd=REPO, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert edge.returncode == 0, edge.stderr
    assert "tls=on token=set" in edge.stderr and TOKEN_A not in edge.stderr
    with sqlite3.connect(f"file:{tls_cloud['db']}?mode=ro", uri=True) as con:
        seqs = [s for (s,) in con.execute("SELECT seq FROM scores WHERE camera_id='cam-a' ORDER BY seq")]
    assert seqs == [0, 1, 2, 3]


def test_plaintext_client_cannot_talk_to_a_tls_cloud(tls_cloud):
    with grpc.insecure_channel(f"127.0.0.1:{tls_cloud['port']}") as ch, pytest.raises(grpc.RpcError) as err:
        handshake(ch, "cam-a", TOKEN_A)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_edge_without_tls_against_a_tls_cloud_says_so(tls_cloud, tmp_path):
    edge = subprocess.Popen(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(CLIP),
         # 127.0.0.1: "localhost" may try ::1 too, and gRPC then reports whichever address failed last
         "--cloud", f"127.0.0.1:{tls_cloud['port']}", "--camera-id", "cam-a", "--spool", str(tmp_path / "spool"),
         "--max-frames", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", INFOCUT_EDGE__BACKOFF_S="[0.2, 0.5]"),
    )
    try:
        out = ""
        deadline = time.monotonic() + 60
        while not any("event=link_lost" in ln and "TLS" in ln for ln in out.splitlines()) and time.monotonic() < deadline:
            out += edge.stdout.readline()
    finally:
        edge.kill()
        edge.wait()
    assert "event=link_lost" in out and "UNAVAILABLE" in out and "TLS" in out, out


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_cloud, pki):
    with secure(mtls_cloud["addr"], pki) as ch, pytest.raises(grpc.RpcError) as err:
        handshake(ch, "cam-a")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure(mtls_cloud["addr"], pki, client_cert=True) as ch:
        assert handshake(ch, "cam-a").artifact_id == demo_id()
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(300)
def test_edge_streams_over_mutual_tls_with_its_client_certificate(mtls_cloud, pki, tmp_path):
    edge = subprocess.run(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(CLIP),
         "--cloud", mtls_cloud["addr"], "--camera-id", "cam-m", "--spool", str(tmp_path / "spool"),
         "--max-frames", "3", "--tls-ca", str(pki["ca.pem"]), "--tls-cert", str(pki["client.pem"]),
         "--tls-key", str(pki["client.key"])],
        cwd=REPO, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert edge.returncode == 0, edge.stderr
    assert "tls=mutual" in edge.stderr
    with sqlite3.connect(f"file:{mtls_cloud['db']}?mode=ro", uri=True) as con:
        seqs = [s for (s,) in con.execute("SELECT seq FROM scores WHERE camera_id='cam-m' ORDER BY seq")]
    assert seqs == [0, 1, 2]


def test_bad_tls_files_are_clear_errors_at_start(pki, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "infocut", "cloud", "--artifact", str(DEMO_ARTIFACT), "--grpc-port", str(free_port()),
         "--http-port", str(free_port()), "--db", f"sqlite:///{tmp_path / 'x.db'}", "--host", "127.0.0.1",
         "--tls-cert", str(pki["server.key"]), "--tls-key", str(pki["server.key"])],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "not a PEM certificate" in proc.stderr, proc.stderr
    with pytest.raises(tls.TLSError, match="both the certificate and its private key"):
        tls.channel_credentials(pki["ca.pem"], pki["client.pem"], None)
    with pytest.raises(tls.TLSError, match="No such file"):
        tls.channel_credentials(tmp_path / "missing.pem")


# -- tokens -----------------------------------------------------------------------------------------
def test_handshake_needs_the_right_token_for_its_camera(tls_cloud, pki):
    with secure(tls_cloud["addr"], pki) as ch:
        for token in (None, "wrong-token"):
            with pytest.raises(grpc.RpcError) as err:
                handshake(ch, "cam-a", token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
        with pytest.raises(grpc.RpcError) as err:
            handshake(ch, "cam-b", TOKEN_A)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert handshake(ch, "cam-a", TOKEN_A).last_seq >= -1
        assert handshake(ch, "cam-b", TOKEN_B).last_seq == -1


def test_stream_and_submit_refuse_frames_of_another_camera_and_go_on(tls_cloud, pki, tensor):
    md_a = [("authorization", f"Bearer {TOKEN_A}"), ("x-infocut-artifact-id", demo_id())]
    with secure(tls_cloud["addr"], pki) as ch:
        stub = pb_grpc.IngestStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Stream(iter([frame("cam-a", 100, tensor)]), metadata=md_a[1:], timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        frames = [frame("cam-a", 100, tensor), frame("cam-b", 100, tensor), frame("cam-a", 101, tensor)]
        results = list(stub.Stream(iter(frames), metadata=md_a, timeout=60))
        assert [(r.camera_id, r.seq, r.status.code) for r in results] == [
            ("cam-a", 100, 0), ("cam-b", 100, grpc.StatusCode.PERMISSION_DENIED.value[0]), ("cam-a", 101, 0)]
        r = stub.Submit(frame("cam-b", 102, tensor), metadata=md_a, timeout=30)
        assert r.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and "cam-a" in r.status.message
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(frame("cam-a", 102, tensor), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with sqlite3.connect(f"file:{tls_cloud['db']}?mode=ro", uri=True) as con:
        assert con.execute("SELECT count(*) FROM scores WHERE camera_id='cam-b'").fetchone()[0] == 0


@pytest.mark.timeout(180)
def test_edge_with_a_wrong_token_stops_with_a_clear_error(tls_cloud, pki, tmp_path):
    edge = subprocess.run(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(CLIP),
         "--cloud", tls_cloud["addr"], "--camera-id", "cam-b", "--spool", str(tmp_path / "spool"),
         "--max-frames", "2", "--tls-ca", str(pki["ca.pem"])],
        cwd=REPO, capture_output=True, text=True, timeout=150,
        env=dict(os.environ, INFOCUT_EDGE__TOKEN="not-the-token"),
    )
    assert edge.returncode == 2, edge.stderr
    assert "UNAUTHENTICATED" in edge.stderr and "token" in edge.stderr and "not-the-token" not in edge.stderr


def test_token_table_errors_are_clear(tmp_path):
    from cloud.auth import TokenTableError, load_table

    bad = tmp_path / "tokens.yaml"
    bad.write_text("cam-a: same\ncam-b: same\n")
    with pytest.raises(TokenTableError, match="share a token"):
        load_table(bad)
    bad.write_text("- cam-a\n")
    with pytest.raises(TokenTableError, match="expected a mapping"):
        load_table(bad)
    with pytest.raises(TokenTableError, match="No such file"):
        load_table(tmp_path / "missing.yaml")
