"""The edge's YAML configuration: defaults per camera, environment overrides, clear errors; and the
stage queues' two policies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from edge.config import ConfigError, load, load_file
from edge.stages import END, StageQueue
from infocut.settings import REPO

YAML = """
artifact: artifacts/demo
cloud: cloud.example.org:50051
spool: {dir: /var/lib/infocut-edge/spool, cap_bytes: 500000000, when_full: reject-new}
cameras:
  - id: gate
    source: rtsp://10.0.0.5/stream1
  - id: archive
    source: /data/clip.mp4
    cloud: other:50051
    spool: {dir: /tmp/archive, ttl_s: 3600}
  - id: usb
    source: "0"
    policy: lossless
"""


def test_cameras_inherit_the_top_level_and_policy_follows_the_source(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(YAML)
    cfg = load_file(path, environ={})
    gate, archive, usb = cfg.cameras
    assert (gate.policy, archive.policy, usb.policy) == ("realtime", "lossless", "lossless")
    assert gate.cloud == "cloud.example.org:50051" and archive.cloud == "other:50051"
    assert gate.spool.cap_bytes == 500_000_000 and gate.spool.when_full == "reject-new"
    assert archive.spool.ttl_s == 3600 and archive.spool.when_full == "drop-oldest", "a camera's spool replaces the default"
    assert str(usb.artifact) == "artifacts/demo"


def test_environment_overrides_reach_nested_fields_and_list_items(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(YAML)
    env = {
        "INFOCUT_EDGE__CAMERAS__0__SOURCE": "rtsp://10.0.0.6/stream2",
        "INFOCUT_EDGE__CAMERAS__2__MAX_FRAMES": "100",
        "INFOCUT_EDGE__SPOOL__CAP_BYTES": "4096",
        "infocut_edge__metrics_port": "9100",
        "INFOCUT_EDGE__CAMERAS__3__ID": "new",
        "INFOCUT_EDGE__CAMERAS__3__SOURCE": "rtsp://10.0.0.7/s",
        "OTHER": "ignored",
    }
    cfg = load_file(path, environ=env)
    assert cfg.cameras[0].source == "rtsp://10.0.0.6/stream2"
    assert cfg.cameras[2].max_frames == 100
    assert cfg.spool.cap_bytes == 4096 and cfg.metrics_port == 9100
    assert [c.id for c in cfg.cameras] == ["gate", "archive", "usb", "new"]


@pytest.mark.parametrize(
    ("doc", "env", "message"),
    [
        ({"cameras": [{"id": "a", "source": "0"}]}, {}, "camera a: no artifact"),
        ({"artifact": "x", "cameras": [{"id": "a b", "source": "0"}]}, {}, "cameras.0.id"),
        ({"artifact": "x", "cameras": [{"id": "a", "source": "0", "policy": "fast"}]}, {}, "cameras.0.policy"),
        ({"artifact": "x", "cameras": [{"id": "a", "source": "0", "sauce": 1}]}, {}, "cameras.0.sauce"),
        ({"artifact": "x", "cameras": [{"id": "a", "source": "0"}] * 2}, {}, "unique"),
        ({"artifact": "x", "cameras": []}, {}, "cameras"),
        ({"artifact": "x", "cameras": [{"id": "a", "source": "0"}]}, {"INFOCUT_EDGE__SPOOL__WHEN_FULL": "panic"},
         "spool.when_full"),
        ({"artifact": "x", "cameras": [{"id": "a", "source": "0"}]}, {"INFOCUT_EDGE__CAMERAS__5__ID": "b"},
         "not an index"),
        ({"artifact": "x", "cloud": "c:1", "cameras": [{"id": "a", "source": "0"}]},
         {"INFOCUT_EDGE__CLOUD__HOST": "b"}, "cloud is a value"),
    ],
)
def test_bad_configurations_are_refused_with_the_field_named(doc, env, message):
    with pytest.raises(ConfigError, match=message):
        load(doc, "test", environ=env)


def test_cli_reports_a_bad_config_file_and_exits_2(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("cameras: [{id: a, source: '0', policy: fast}]\nartifact: x\n")
    proc = subprocess.run([sys.executable, "-m", "infocut", "edge", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cameras.0.policy" in proc.stderr and str(path) in proc.stderr


def test_realtime_queue_drops_the_oldest_and_lossless_queue_blocks():
    stop = threading.Event()
    dropped = []
    q = StageQueue(2, drop_oldest=True, on_drop=dropped.append, stop=stop)
    for i in range(5):
        assert q.put(i)
    assert dropped == [0, 1, 2] and [q.get(), q.get()] == [3, 4]
    q.close()
    assert q.get() is END

    q = StageQueue(1, drop_oldest=False, on_drop=dropped.append, stop=stop)
    q.put("a")
    t0 = time.monotonic()
    threading.Timer(0.3, q.get).start()
    assert q.put("b") and time.monotonic() - t0 >= 0.25, "put waited for the consumer"
    threading.Timer(0.3, stop.set).start()
    assert not q.put("c"), "a stopped pipeline stops waiting"


def test_link_settings_are_defaults_a_camera_may_override(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret-b\n")
    doc = {
        "artifact": "artifacts/demo", "tls": {"ca": "/etc/infocut/ca.pem"}, "token": "secret-a", "providers": "cpu",
        "spool": {"mode": "always"},
        "cameras": [
            {"id": "a", "source": "0"},
            {"id": "b", "source": "1", "token_file": str(token), "providers": "auto",
             "tls": {"ca": "/ca.pem", "cert": "/b.pem", "key": "/b.key"}},
        ],
    }
    a, b = load(doc, "test", environ={"INFOCUT_EDGE__CAMERAS__0__STALL_TIMEOUT_S": "3"}).cameras
    assert a.bearer_token() == "secret-a" and b.bearer_token() == "secret-b"
    assert "secret" not in repr(a), "a token never shows in a config's repr (logs)"
    assert str(a.tls.ca) == "/etc/infocut/ca.pem" and a.tls.cert is None and str(b.tls.cert) == "/b.pem"
    assert (a.providers, b.providers) == ("cpu", "auto")
    assert load(doc, "test", environ={}).cpu_scheduling == "batch"  # the default
    assert load(doc, "test", environ={"INFOCUT_EDGE__CPU_SCHEDULING": "normal"}).cpu_scheduling == "normal"
    assert a.spool.mode == "always" and a.stall_timeout_s == 3 and b.stall_timeout_s == 10


def test_bad_link_settings_name_the_field(tmp_path):
    base = {"artifact": "a", "cameras": [{"id": "a", "source": "0"}]}
    with pytest.raises(ConfigError, match=r"providers.*unknown gpu"):
        load({**base, "providers": "gpu"}, "test", environ={})
    with pytest.raises(ConfigError, match=r"spool.mode"):
        load({**base, "spool": {"mode": "sometimes"}}, "test", environ={})
    with pytest.raises(ConfigError, match=r"cpu_scheduling"):
        load({**base, "cpu_scheduling": "realtime"}, "test", environ={})
    cam = load({**base, "token_file": str(tmp_path / "missing")}, "test", environ={}).cameras[0]
    with pytest.raises(ConfigError, match="token_file .*No such file"):
        cam.bearer_token()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lower_priority_lowers_only_the_calling_thread_and_what_it_starts():
    from edge.stages import lower_priority

    def nice_of(tid: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, tid)

    mine = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def stage():
        lower_priority(5)
        seen["stage"] = nice_of(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.__setitem__("child", nice_of(threading.get_native_id())))
        child.start()
        child.join()

    t = threading.Thread(target=stage)
    t.start()
    t.join()
    assert seen == {"stage": min(19, mine + 5), "child": min(19, mine + 5)}
    assert nice_of(threading.get_native_id()) == mine  # the caller's (the head's) priority is untouched


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_batch_scheduling_takes_the_calling_thread_and_what_it_starts_not_the_caller():
    from edge.stages import batch_scheduling

    mine = os.sched_getscheduler(0)
    seen: dict[str, int] = {}

    def camera():
        seen["took"] = batch_scheduling()
        seen["camera"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.__setitem__("stage", os.sched_getscheduler(0)))
        child.start()
        child.join()

    t = threading.Thread(target=camera)
    t.start()
    t.join()
    assert seen == {"took": True, "camera": os.SCHED_BATCH, "stage": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == mine  # the thread that started the camera is untouched


def test_head_workers_hand_results_on_in_the_order_frames_were_taken():
    """Workers finish out of order (random head times); the next stage still sees every frame in order."""
    import random

    from edge.stages import InOrder

    stop = threading.Event()
    source = StageQueue(4, drop_oldest=False, on_drop=None, stop=stop)
    out: list[int] = []
    order = InOrder(source, lambda x: out.append(x) or True, window=6)
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.01) for _ in range(60)]

    def worker():
        while (taken := order.take())[0] is not END:
            item, ticket = taken
            time.sleep(delays[item])
            assert order.done(ticket, item)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(60):
        source.put(i)
    source.close()
    for t in threads:
        t.join(10)
    assert out == list(range(60)) and not order.pending


def test_in_order_keeps_what_a_stopped_stage_refused():
    from edge.stages import InOrder

    stop = threading.Event()
    source = StageQueue(4, drop_oldest=False, on_drop=None, stop=stop)
    for i in range(3):
        source.put(i)
    order = InOrder(source, lambda x: x != 1, window=8)  # the next stage refuses item 1 (the pipeline stopped)
    taken = [order.take() for _ in range(3)]
    assert [t for _, t in taken] == [0, 1, 2]
    assert order.done(2, 2) and order.pending == {2: 2}, "held until ticket 0 and 1 are done"
    assert order.done(0, 0)
    assert not order.done(1, 1), "the refusal is reported"
    assert order.pending == {2: 2}, "what is still held stays counted as held"


def test_in_order_takes_no_more_while_a_window_of_results_waits_for_a_slow_one():
    from edge.stages import InOrder

    stop = threading.Event()
    source = StageQueue(8, drop_oldest=False, on_drop=None, stop=stop)
    for i in range(4):
        source.put(i)
    out: list[int] = []
    order = InOrder(source, lambda x: out.append(x) or True, window=2)
    (_, slow), (_, fast) = order.take(), order.take()
    assert order.done(fast, "b") and out == []
    got = []
    taker = threading.Thread(target=lambda: got.append(order.take()))
    taker.start()
    taker.join(0.5)
    assert taker.is_alive() and not got, "two results wait for ticket 0: no third is taken"
    assert order.done(slow, "a") and out == ["a", "b"]
    taker.join(5)
    assert got == [(2, 2)]
    assert order.take() == (3, 3), "room for one more"
    stop.set()
    assert order.take() == (END, -1), "a full window on a stopped pipeline ends the worker instead of waiting"


@pytest.mark.parametrize("cores, cameras, workers, threads, expected", [
    ([0, 1], 1, 0, 0, (2, 1)),  # a CPU head on 2 cores: two sessions of one thread
    ([0, 1, 2, 3], 1, 0, 0, (2, 2)),
    ([0], 1, 0, 0, (1, 1)),
    ([0, 1], 1, 1, 0, (1, 2)),  # one session takes the cores it may run on, not onnxruntime's own count
    ([0, 1, 2, 3], 1, 3, 1, (3, 1)),
    ([0, 1], 2, 0, 0, (1, 1)),  # two cameras on 2 cores: one session of one thread each
    ([0, 1, 2, 3], 2, 0, 0, (2, 1)),
    ([0, 1, 2, 3, 4, 5, 6, 7], 3, 0, 0, (2, 1)),
])
def test_head_workers_share_the_cores_the_process_may_use(monkeypatch, cores, cameras, workers, threads, expected):
    from edge import agent

    made = []
    monkeypatch.setattr(agent, "Head", lambda art, t, prov, spin: made.append(t) or object())
    monkeypatch.setattr(agent.os, "sched_getaffinity", lambda _: set(cores), raising=False)
    cfg = load({"artifact": "artifacts/demo", "cameras": [{"id": "a", "source": "clip.mp4", "providers": "cpu",
                                                          "head_workers": workers, "threads": threads}]},
               "test", environ={}).cameras[0]
    agent.head_workers(None, cfg, cameras)
    assert (len(made), made[0]) == expected


def test_a_gpu_head_keeps_one_session(monkeypatch):
    from edge import agent

    made = []
    monkeypatch.setattr(agent, "Head", lambda art, t, prov, spin: made.append(t) or object())
    monkeypatch.setattr(agent.os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(agent.eps, "resolve", lambda spec: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cfg = load({"artifact": "artifacts/demo", "cameras": [{"id": "a", "source": "clip.mp4"}]}, "test",
               environ={}).cameras[0]
    agent.head_workers(None, cfg)
    assert made == [6], "one session; its CPU threads (nodes the GPU lacks) take the cores"
