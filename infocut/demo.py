"""`infocut demo`: the two-node deployment on one machine, on the bundled Ped2 clip.

The cloud and the edge run as two separate processes talking real gRPC over loopback, exactly
as `infocut cloud` and `infocut edge` would on two machines. The demo then follows the REST API
and prints alerts as they open and close.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from infocut.settings import DEMO_ARTIFACT, DEMO_CLIP, DEMO_LABELS


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the cloud exited with code {proc.returncode} before it was ready")
        try:
            get_json(f"{base}/readyz", timeout=1.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(f"the cloud was not ready at {base} after {timeout:.0f}s")


def describe(alert: dict) -> str:
    state = "OPEN  " if alert["state"] == "open" else "closed"
    return (
        f"alert {alert['id']:>3} {state} camera {alert['camera_id']} frames {alert['start_seq']}..{alert['end_seq']} "
        f"({alert['frames']} anomalous) peak score {alert['peak_score']:.2f} at frame {alert['peak_seq']}"
    )


def follow_alerts(base: str, seen: dict[int, str]) -> None:
    """Print every alert that is new or has changed state since the last poll."""
    items = get_json(f"{base}/alerts?limit=1000")["items"]
    for alert in sorted(items, key=lambda a: a["id"]):
        key = f"{alert['state']}:{alert['end_seq']}"
        if seen.get(alert["id"]) != key and (alert["id"] not in seen or alert["state"] == "closed"):
            print(describe(alert), flush=True)
        seen[alert["id"]] = key


def run(http_port: int = 8000, grpc_port: int = 50051, db: str | None = None, keep: bool = True,
        realtime: bool = True) -> int:
    # Stop cleanly on Ctrl-C and on SIGTERM, also when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    labels = json.loads(DEMO_LABELS.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="infocut-demo-"))
    db = db or f"sqlite:///{workdir / 'infocut.db'}"
    base = f"http://127.0.0.1:{http_port}"
    exe = [sys.executable, "-m", "infocut"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    print(f"infocut demo: clip {DEMO_CLIP.name} ({labels['frames']} frames, labeled anomalous "
          f"{labels['anomalous']}), artifact {DEMO_ARTIFACT}", flush=True)
    cloud = subprocess.Popen(
        [*exe, "cloud", "--artifact", str(DEMO_ARTIFACT), "--grpc-port", str(grpc_port), "--http-port",
         str(http_port), "--db", db, "--host", "127.0.0.1"],
        env=env,
    )
    edge = None
    try:
        wait_ready(base, cloud)
        print(f"cloud ready: REST {base} (docs {base}/docs), gRPC 127.0.0.1:{grpc_port}", flush=True)
        edge = subprocess.Popen(
            [*exe, "edge", "--artifact", str(DEMO_ARTIFACT), "--source", str(DEMO_CLIP),
             "--cloud", f"127.0.0.1:{grpc_port}", "--camera-id", "ped2-test01", "--spool", str(workdir / "spool"),
             *(["--pace"] if realtime else [])],
            env=env,
        )
        seen: dict[int, str] = {}
        while edge.poll() is None:
            follow_alerts(base, seen)
            time.sleep(0.5)
        follow_alerts(base, seen)
        if edge.returncode != 0:
            print(f"edge exited with code {edge.returncode}", flush=True)
            return edge.returncode
        print("alerts at the end of the clip:", flush=True)
        for alert in sorted(get_json(f"{base}/alerts?limit=1000")["items"], key=lambda a: a["id"]):
            print("  " + describe(alert), flush=True)
        cams = get_json(f"{base}/cameras")
        for cam in cams:
            print(f"camera {cam['camera_id']}: {cam['frames']} frames scored, "
                  f"{cam['mean_bytes_per_frame']:,.0f} bytes/frame on the wire", flush=True)
        print(f"{len(seen)} alert(s); list them with: curl {base}/alerts", flush=True)
        if keep:
            print("REST API still up; Ctrl-C to stop.", flush=True)
            cloud.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (edge, cloud):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
