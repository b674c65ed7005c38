"""One camera's link to the cloud: handshake, then a bidirectional stream fed from the spool.

The spool is the outbox: the stream sends its frames in seq order, at most `max_inflight` unacked,
and each result (the cloud acks only what it has stored) resolves one frame. When the link drops,
the frames in flight are rewound and sent again first on the next connection (the cloud
deduplicates on camera id and seq), after a jittered exponential backoff so that cameras do not
reconnect in lockstep.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import grpc

import infocut
from edge.metrics import CameraStats
from edge.spool import Spool
from infocut.artifact import Artifact
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc

log = logging.getLogger("infocut.edge.link")

ARTIFACT_HEADER = "x-infocut-artifact-id"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
HANDSHAKE_TIMEOUT_S = 10
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


class EdgeError(RuntimeError):
    """A fault retrying cannot fix (wrong artifact, unreadable source, bad configuration)."""


class Link:
    def __init__(self, camera_id: str, cloud: str, artifact: Artifact, spool: Spool, stats: CameraStats,
                 stop: threading.Event, max_inflight: int, backoff: tuple[float, float],
                 request_key: Callable[[], None] = lambda: None) -> None:
        self.camera_id = camera_id
        self.cloud = cloud
        self.artifact = artifact
        self.spool = spool
        self.stats = stats
        self.stop = stop
        self.max_inflight = max_inflight
        self.backoff = backoff
        self.request_key = request_key  # the encoder's: next frame a key frame (reconnect, missing reference)

    def _retrying(self, attempt: Callable[[], bool | int]):
        """Run `attempt` until it returns a non-False value, backing off after each link failure."""
        delay = self.backoff[0]
        while not self.stop.is_set():
            try:
                out = attempt()
                if out is not False or self.stop.is_set():
                    return out
                reason = "stream closed by the cloud"
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise EdgeError(e.details()) from None
                reason = f"{e.code().name}: {e.details()}"
            self.stats.add("reconnects")
            wait = delay * (0.5 + random.random())
            log.warning("event=link_lost camera=%s cloud=%s reason=%r retry_in_s=%.1f", self.camera_id,
                        self.cloud, reason, wait)
            self.stop.wait(wait)
            delay = min(delay * 2, self.backoff[1])
        return None

    def _channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.cloud, options=CHANNEL_OPTIONS)

    def _handshake(self, channel: grpc.Channel) -> int:
        reply = pb_grpc.IngestStub(channel).Handshake(
            pb.HandshakeRequest(camera_id=self.camera_id, artifact_id=self.artifact.id,
                                client_version=infocut.__version__),
            timeout=HANDSHAKE_TIMEOUT_S,
        )
        return reply.last_seq

    def last_seq(self) -> int | None:
        """The last seq the cloud stored for this camera (retried until the cloud answers; None if stopped)."""

        def attempt() -> int:
            with self._channel() as channel:
                return self._handshake(channel)

        return self._retrying(attempt)

    def run(self, finished: Callable[[], bool]) -> None:
        """Stream until `finished()` (no more frames will come) and the spool is empty, or until stop."""
        self._retrying(lambda: self._connection(finished))

    def _connection(self, finished: Callable[[], bool]) -> bool:
        """One connection's life; True once every frame is resolved and no more will come."""
        dead = threading.Event()
        with self._channel() as channel:
            self._handshake(channel)
            self.request_key()
            resent = self.spool.rewind()
            if resent:
                log.info("event=replay camera=%s frames=%d", self.camera_id, resent)
            call = pb_grpc.IngestStub(channel).Stream(
                self._requests(dead, finished), metadata=[(ARTIFACT_HEADER, self.artifact.id)]
            )
            try:
                for r in call:
                    self._on_result(r)
            finally:
                dead.set()
                call.cancel()
        return finished() and self.spool.depth[0] == 0

    def _requests(self, dead: threading.Event, finished: Callable[[], bool]):
        """Spooled frames in seq order; ends once nothing more will come and all is resolved."""
        while not dead.is_set() and not self.stop.is_set():
            rec = self.spool.next(timeout=0.2, limit=self.max_inflight)
            if rec is None:
                if finished() and self.spool.depth[0] == 0:
                    return
                continue
            self.stats.add("sent")
            yield pb.Frame(camera_id=self.camera_id, seq=rec.seq, capture_time_us=rec.capture_time_us,
                           artifact_id=self.artifact.id, tensor=rec.data)

    def _on_result(self, r: pb.FrameResult) -> None:
        if not self.spool.ack(r.seq):
            return
        if r.status.code != 0:
            if r.status.code == FAILED_PRECONDITION:  # the cloud lacks the reference of a delta frame
                self.request_key()
            self.stats.add("rejected")
            log.warning("event=frame_rejected camera=%s seq=%d reason=%r", self.camera_id, r.seq, r.status.message)
            return
        self.stats.add("acked")
        self.stats.add("duplicates", int(r.duplicate))
        self.stats.add("anomalous", int(r.is_anomaly))
