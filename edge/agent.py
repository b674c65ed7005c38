"""The edge agent: capture -> head -> code -> gRPC stream, with at-least-once delivery.

Capture, head and coding run in one thread and feed a bounded queue; the main thread keeps one
bidirectional stream to the cloud. Every frame stays in `unacked` until the cloud's result for
it arrives (the cloud acks only what it has stored), and on reconnect the unacked frames are
sent again, in order, before new ones: the cloud deduplicates on (camera id, seq). At most
`max_inflight` frames are unacked at a time, which bounds memory and pushes back on capture.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import infocut
from codec import encode_frame
from edge.head import Head
from edge.preprocess import to_input
from edge.source import open_source
from infocut.artifact import load_artifact
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc

log = logging.getLogger("infocut.edge")

ARTIFACT_HEADER = "x-infocut-artifact-id"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_END = object()


class EdgeError(RuntimeError):
    """A fault retrying cannot fix (wrong artifact, unreadable source)."""


@dataclass
class EdgeConfig:
    artifact: Path
    source: str
    cloud: str
    camera_id: str
    max_inflight: int = 64
    queue_size: int = 16
    threads: int = 0
    max_frames: int | None = None
    realtime: bool = False  # pace a file source at its own frame rate, as a camera would deliver it
    backoff: tuple[float, float] = (0.25, 10.0)
    progress: bool = True


@dataclass
class EdgeStats:
    captured: int = 0
    acked: int = 0
    rejected: int = 0
    duplicates: int = 0
    anomalous: int = 0
    bytes_sent: int = 0
    reconnects: int = 0
    started: float = field(default_factory=time.monotonic)
    first_seq: int = 0

    def line(self, camera_id: str) -> str:
        dt = max(time.monotonic() - self.started, 1e-9)
        per = self.bytes_sent / self.captured if self.captured else 0
        return (
            f"{camera_id}: {self.captured} captured, {self.acked} acked, {self.rejected} rejected, "
            f"{self.anomalous} anomalous | {self.captured / dt:5.1f} fps | {per:,.0f} B/frame | "
            f"{self.reconnects} reconnects"
        )


class Agent:
    def __init__(self, cfg: EdgeConfig):
        self.cfg = cfg
        self.artifact = load_artifact(cfg.artifact)
        self.head = Head(self.artifact, cfg.threads)
        self.stats = EdgeStats()
        self.frames: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.unacked: OrderedDict[int, pb.Frame] = OrderedDict()
        self.cv = threading.Condition()
        self.capture_done = False
        self.capture_error: BaseException | None = None
        self.stop = threading.Event()
        self.capturer: threading.Thread | None = None

    # -- capture thread ---------------------------------------------------------------------
    def capture(self, first_seq: int) -> None:
        try:
            source = open_source(self.cfg.source)
            period = 1.0 / source.fps if self.cfg.realtime and source.fps else 0.0
            next_at = time.monotonic()
            with source:
                for i, cap in enumerate(source):
                    if self.stop.is_set() or (self.cfg.max_frames is not None and i >= self.cfg.max_frames):
                        break
                    if period:
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        next_at += period
                    codes = self.head(to_input(cap.image, self.artifact.input_size)[None])
                    data = encode_frame(codes, self.artifact.bits, self.artifact.coder)
                    frame = pb.Frame(
                        camera_id=self.cfg.camera_id,
                        seq=first_seq + i,
                        capture_time_us=int(cap.time * 1e6),
                        artifact_id=self.artifact.id,
                        tensor=data,
                    )
                    self.frames.put(frame)
        except Exception as e:  # noqa: BLE001  (an unreadable or dying source ends the run with its error)
            self.capture_error = e
        finally:
            self.frames.put(_END)

    # -- link ---------------------------------------------------------------------------------
    def _requests(self, dead: threading.Event):
        """Unacked frames first, then new ones; ends once capture is done and all is acked."""
        with self.cv:
            backlog = list(self.unacked.values())
        yield from backlog
        while not dead.is_set():
            with self.cv:
                while len(self.unacked) >= self.cfg.max_inflight and not dead.is_set():
                    self.cv.wait(0.2)
                if self.capture_done:
                    if not self.unacked:
                        return
                    self.cv.wait(0.2)
                    continue
            try:
                frame = self.frames.get(timeout=0.2)
            except queue.Empty:
                continue
            if frame is _END:
                with self.cv:
                    self.capture_done = True
                    self.cv.notify_all()
                continue
            with self.cv:
                self.unacked[frame.seq] = frame
            self.stats.captured += 1
            self.stats.bytes_sent += len(frame.tensor)
            yield frame

    def _on_result(self, r: pb.FrameResult) -> None:
        with self.cv:
            self.unacked.pop(r.seq, None)
            self.cv.notify_all()
        if r.status.code != 0:
            self.stats.rejected += 1
            log.warning("frame %d rejected by the cloud: %s", r.seq, r.status.message)
            return
        self.stats.acked += 1
        self.stats.duplicates += r.duplicate
        self.stats.anomalous += r.is_anomaly

    def handshake(self, stub) -> pb.HandshakeReply:
        try:
            return stub.Handshake(
                pb.HandshakeRequest(
                    camera_id=self.cfg.camera_id, artifact_id=self.artifact.id, client_version=infocut.__version__
                ),
                timeout=10,
                wait_for_ready=False,
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise EdgeError(e.details()) from None
            raise

    def _connection(self) -> bool:
        """One connection's life; True once everything is captured and acked."""
        dead = threading.Event()
        with grpc.insecure_channel(self.cfg.cloud, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.IngestStub(channel)
            reply = self.handshake(stub)
            if self.capturer is None:  # number frames after what the cloud already holds for this camera
                self.stats.first_seq = reply.last_seq + 1
                self.capturer = threading.Thread(target=self.capture, args=(self.stats.first_seq,), daemon=True)
                self.capturer.start()
            call = stub.Stream(self._requests(dead), metadata=[(ARTIFACT_HEADER, self.artifact.id)])
            try:
                for r in call:
                    self._on_result(r)
            finally:
                dead.set()
                call.cancel()
        with self.cv:
            return self.capture_done and not self.unacked

    def run(self) -> EdgeStats:
        delay = self.cfg.backoff[0]
        reporter = threading.Thread(target=self._report, daemon=True)
        reporter.start()
        try:
            while True:
                try:
                    if self._connection():
                        break
                    reason = "stream closed by the cloud"
                except grpc.RpcError as e:
                    reason = f"{e.code().name}: {e.details()}"
                self.stats.reconnects += 1
                wait = delay * (0.5 + random.random())  # jitter: cameras must not reconnect in lockstep
                log.warning("link to %s lost (%s); retrying in %.1fs", self.cfg.cloud, reason, wait)
                time.sleep(wait)
                delay = min(delay * 2, self.cfg.backoff[1])
        finally:
            self.stop.set()
            reporter.join(timeout=2)
            if self.cfg.progress:
                print(self.stats.line(self.cfg.camera_id), file=sys.stderr, flush=True)
        if self.capture_error is not None:
            raise EdgeError(f"source {self.cfg.source}: {self.capture_error}")
        return self.stats

    def _report(self) -> None:
        tty = sys.stderr.isatty()
        while not self.stop.wait(1.0 if tty else 5.0):
            if self.cfg.progress:
                print(self.stats.line(self.cfg.camera_id), end="\r" if tty else "\n", file=sys.stderr, flush=True)


def run(cfg: EdgeConfig) -> EdgeStats:
    return Agent(cfg).run()
