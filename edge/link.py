"""One camera's link to the cloud: handshake, then a bidirectional stream fed from the outbox.

The stream sends the outbox's frames (edge/outbox.py: memory, then the spool) in seq order, at most
`max_inflight` unacked, and each result (the cloud acks only what it has stored) resolves one frame.
When the link drops, the frames in flight are rewound and sent again first on the next connection
(the cloud deduplicates on camera id and seq), after a jittered exponential backoff so that cameras
do not reconnect in lockstep. A refusal retrying cannot fix (another artifact, a missing or wrong
token, a camera the token does not cover) ends the camera with an EdgeError instead.

The channel is TLS when a CA or client certificate is configured (mutual TLS with the latter), and
carries the camera's bearer token. Its service config retries the unary calls (Handshake, Submit)
on UNAVAILABLE with backoff inside gRPC, so a cloud that restarts or comes up a moment late costs
no reconnect round here.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable

import grpc

import infocut
from edge.metrics import CameraStats
from edge.outbox import Outbox
from infocut.artifact import Artifact
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc

log = logging.getLogger("infocut.edge.link")

ARTIFACT_HEADER = "x-infocut-artifact-id"
SERVICE = pb.DESCRIPTOR.services_by_name["Ingest"].full_name
# gRPC retries the unary calls itself while the cloud is unreachable (the stream is resumed by Link).
SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": SERVICE, "method": "Handshake"}, {"service": SERVICE, "method": "Submit"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # Reconnect attempts no slower than the retry policy, or retries would meet a channel still backing off.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
HANDSHAKE_TIMEOUT_S = 10
FATAL = {
    grpc.StatusCode.FAILED_PRECONDITION: "",
    grpc.StatusCode.UNAUTHENTICATED: " (check this camera's token / token_file against the cloud's token table)",
    grpc.StatusCode.PERMISSION_DENIED: " (the token belongs to another camera id)",
}
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


class EdgeError(RuntimeError):
    """A fault retrying cannot fix (wrong artifact or token, unreadable source, bad configuration)."""


def channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel to the cloud with the edge's options (keepalive, retry policy); TLS with `credentials`."""
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


class Link:
    def __init__(self, camera_id: str, cloud: str, artifact: Artifact, outbox: Outbox, stats: CameraStats,
                 stop: threading.Event, max_inflight: int, backoff: tuple[float, float],
                 request_key: Callable[[], None] = lambda: None,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None) -> None:
        self.camera_id = camera_id
        self.cloud = cloud
        self.artifact = artifact
        self.outbox = outbox
        self.stats = stats
        self.stop = stop
        self.max_inflight = max_inflight
        self.backoff = backoff
        self.credentials = credentials
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        # Seqs a live camera gave out before its first handshake that the cloud already holds (its spool
        # was wiped, or the id reused): such frames are dropped, never answered with another frame's score.
        self.conflict = range(0)
        self.on_handshake: Callable[[int], None] | None = None  # called with the cloud's last seq
        self.request_key = request_key  # the encoder's: next frame a key frame (reconnect, missing reference)
        self._streamed = False  # whether a stream was opened before: the first needs no key frame asked for

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
                if e.code() in FATAL:
                    raise EdgeError(f"the cloud refused camera {self.camera_id}: {e.code().name}: {e.details()}"
                                    f"{FATAL[e.code()]}") from None
                reason = f"{e.code().name}: {e.details()}{self._hint(e)}"
            self.stats.add("reconnects")
            wait = delay * (0.5 + random.random())
            log.warning("event=link_lost camera=%s cloud=%s reason=%r retry_in_s=%.1f", self.camera_id,
                        self.cloud, reason, wait)
            self.stop.wait(wait)
            delay = min(delay * 2, self.backoff[1])
        return None

    def _hint(self, e: grpc.RpcError) -> str:
        """A connection the cloud closes at once is most often a TLS mismatch: say which setting to check."""
        if e.code() != grpc.StatusCode.UNAVAILABLE or "Socket closed" not in (e.details() or ""):
            return ""
        if self.credentials is None:
            return " (does the cloud serve TLS? then set tls.ca / --tls-ca)"
        return " (does the cloud require mutual TLS? then set tls.cert and tls.key / --tls-cert, --tls-key)"

    def _channel(self) -> grpc.Channel:
        return channel(self.cloud, self.credentials)

    def _handshake(self, channel: grpc.Channel) -> int:
        reply = pb_grpc.IngestStub(channel).Handshake(
            pb.HandshakeRequest(camera_id=self.camera_id, artifact_id=self.artifact.id,
                                client_version=infocut.__version__),
            timeout=HANDSHAKE_TIMEOUT_S, metadata=self.metadata,
        )
        if self.on_handshake is not None:
            self.on_handshake(reply.last_seq)
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
            if self._streamed:  # the cloud may lack a reference the frames coded next would lean on; a first
                self.request_key()  # stream starts with this process's first frame, a key frame anyway
            self._streamed = True
            resent = self.outbox.rewind()
            if resent:
                log.info("event=replay camera=%s frames=%d", self.camera_id, resent)
            call = pb_grpc.IngestStub(channel).Stream(
                self._requests(dead, finished), metadata=[(ARTIFACT_HEADER, self.artifact.id), *self.metadata]
            )
            try:
                for r in call:
                    self._on_result(r)
            finally:
                dead.set()
                call.cancel()
        return finished() and self.outbox.depth[0] == 0

    def _requests(self, dead: threading.Event, finished: Callable[[], bool]):
        """Outbox frames in seq order; ends once nothing more will come and all is resolved."""
        while not dead.is_set() and not self.stop.is_set():
            rec = self.outbox.next(timeout=0.2, limit=self.max_inflight)
            if rec is None:
                if finished() and self.outbox.depth[0] == 0:
                    return
                continue
            if rec.seq in self.conflict:
                self.outbox.ack(rec.seq)
                self.stats.drop("seq_conflict")
                self.request_key()  # later delta frames must not lean on a frame the cloud never got
                continue
            self.stats.add("sent")
            yield pb.Frame(camera_id=self.camera_id, seq=rec.seq, capture_time_us=rec.capture_time_us,
                           artifact_id=self.artifact.id, tensor=rec.data)

    def _on_result(self, r: pb.FrameResult) -> None:
        if not self.outbox.ack(r.seq):
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
