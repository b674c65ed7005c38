"""A live camera (a clip served over HTTP, as a network camera serves its stream) captures from the
start, while the cloud is still unreachable: its frames wait in the outbox and the spool, and reach
the cloud, in seq order from 0, once it comes up. Real processes on loopback."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from infocut.settings import DEMO_ARTIFACT, REPO
from tests.conftest import free_port

CLIP = REPO / "assets" / "ped2_test01.mp4"


@pytest.fixture
def camera_url():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=CLIP.parent))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{CLIP.name}"
    server.shutdown()
    server.server_close()


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(rf'{name}\{{camera_id="live"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def batch_threads(pid: int) -> int:
    """How many of the process's threads run under SCHED_BATCH."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += os.sched_getscheduler(int(tid)) == os.SCHED_BATCH
        except OSError:  # the thread ended meanwhile
            continue
    return n


def wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.mark.timeout(400)
def test_live_camera_captures_while_the_cloud_is_down_and_delivers_later(camera_url, tmp_path):
    grpc_port, metrics_port, db = free_port(), free_port(), tmp_path / "infocut.db"
    edge = subprocess.Popen(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", camera_url,
         "--cloud", f"127.0.0.1:{grpc_port}", "--camera-id", "live", "--spool", str(tmp_path / "spool"),
         "--policy", "lossless", "--fps", "5", "--metrics-port", str(metrics_port), "--threads", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", INFOCUT_EDGE__BACKOFF_S="[0.2, 1.0]",
                 INFOCUT_EDGE__CAMERAS__0__OUTBOX_FRAMES="2"),
    )
    cloud = None
    second = None
    try:
        wait_for(lambda: metric(metrics_port, "infocut_edge_spool_frames") >= 3,
                 "the camera captured and spooled frames with no cloud to talk to", edge)
        assert metric(metrics_port, "infocut_edge_frames_acked_total") == 0
        if hasattr(os, "SCHED_BATCH"):  # the camera's threads (capture, head, encode, link) run as SCHED_BATCH
            assert batch_threads(edge.pid) >= 4
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert 'infocut_edge_providers_info{camera_id="live",providers="cpu"} 1.0' in r.read().decode()
        cloud = subprocess.Popen(
            [sys.executable, "-m", "infocut", "cloud", "--artifact", str(DEMO_ARTIFACT), "--grpc-port", str(grpc_port),
             "--http-port", str(free_port()), "--db", f"sqlite:///{db}", "--host", "127.0.0.1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: metric(metrics_port, "infocut_edge_frames_acked_total") >= 8,
                 "the spooled frames reached the cloud once it came up", edge)
        edge.send_signal(signal.SIGINT)
        out = stopped(edge)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            first_run = [s for (s,) in con.execute("SELECT seq FROM scores WHERE camera_id='live' ORDER BY seq")]

        # The same camera id from a wiped spool folder: it numbers from 0 again before its first handshake,
        # which tells it the cloud already holds those seqs; it must not be answered with their old scores.
        shutil.rmtree(tmp_path / "spool")
        second = subprocess.Popen(edge.args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(lambda: metric(metrics_port, "infocut_edge_frames_acked_total") >= 3,
                 "the second edge delivers", second)
    finally:
        for proc in (edge, second, cloud):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        out2 = stopped(second) if second is not None else ""
        if edge.poll() is None:
            edge.kill()
        if cloud is not None:
            cloud.wait(timeout=30)
    counts = summary(out)
    assert counts["captured"] == counts["acked"] + counts["rejected"] + counts["dropped"] + counts["pending"], counts
    assert first_run[:8] == list(range(8)), "numbered from 0 before any handshake, delivered in order"

    again = summary(out2)
    assert "event=seq_conflict" in out2 and again["duplicates"] == 0, out2
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        seqs = [s for (s,) in con.execute("SELECT seq FROM scores WHERE camera_id='live' ORDER BY seq")]
    assert seqs[: len(first_run)] == first_run and len(seqs) >= len(first_run) + 3
    assert min(seqs[len(first_run):]) > max(first_run), "the second edge numbered on after the cloud's last seq"


def stopped(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The output of an edge asked to stop; if it does not within `timeout`, fail with its threads' stacks
    (the edge dumps them on SIGUSR1) to show where it hangs."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"the edge did not stop within {timeout:.0f} s of SIGINT:\n{out[-20000:]}") from None


def summary(out: str) -> dict[str, int]:
    lines = [ln for ln in out.splitlines() if "event=summary" in ln]
    assert lines, out
    line = lines[-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)(?=\s|$)", line)}
