"""The Ingest gRPC service: decode -> tail -> score -> store -> ack, one frame at a time per camera.

A frame is acked only after its result is durably stored, and (camera id, seq) is the key of that
store, so an edge that resends after a reconnect gets the stored result back and nothing is
counted twice. A bad frame gets an error result of its own; the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime

import grpc

import infocut
from cloud import metrics
from cloud.auth import Auth
from cloud.store import Link, Store
from cloud.tail import CameraHistory, Tail
from codec import CodecError, DecodedFrame, MissingReference, decode_frame
from codec.stream import References, pack_codes, unpack_codes
from infocut.artifact import Artifact
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc

log = logging.getLogger("infocut.cloud")
MAX_CHAIN = 256  # links of a reference chain before a checkpoint of the codes (see IngestService._link)

ARTIFACT_HEADER = "x-infocut-artifact-id"
OK, INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION, INTERNAL = 0, 3, 7, 9, 13


def result(frame: pb.Frame, code: int = OK, message: str = "", **kw) -> pb.FrameResult:
    return pb.FrameResult(
        camera_id=frame.camera_id, seq=frame.seq, status=pb.Status(code=code, message=message), **kw
    )


class IngestService(pb_grpc.IngestServicer):
    def __init__(self, artifact: Artifact, store: Store, tail: Tail | None = None, delay_s: float = 0.0,
                 auth: Auth | None = None):
        self.artifact = artifact
        self.auth = auth or Auth(None)
        self.delay_s = delay_s  # test-only slow cloud (CloudConfig.test_delay_s)
        self.store = store
        self.tail = tail or Tail(artifact)
        self.history = CameraHistory(self.tail.gap)
        self.threshold = artifact.threshold
        self.models = artifact.entropy_models
        self.temporal = bool(self.models) and all(m.inter is not None for m in self.models)
        self.references = References(self._stored_reference)
        self._chain_length: dict[str, int] = {}  # links in each camera's stored reference chain
        self._camera_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def mismatch(self, theirs: str) -> str:
        m = self.artifact.manifest
        return (
            f"artifact mismatch: the edge holds {theirs or '(none)'}, this cloud serves {self.artifact.id} "
            f"({m['model']['name']} cut at {m['cut']['name']}, {self.artifact.bits} bits, {self.artifact.coder}); "
            "deploy the same artifact on both nodes"
        )

    async def _caller(self, context) -> str | None:
        """The camera the call's bearer token belongs to (None: no token table); aborts UNAUTHENTICATED."""
        if self.auth.open:
            return None
        camera = self.auth.camera(context.invocation_metadata())
        if camera is None:
            metrics.FRAME_ERRORS.labels(reason="unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown bearer token: send `authorization: Bearer <this camera's token>`")
        return camera

    async def Handshake(self, request, context):
        caller = await self._caller(context)
        if caller is not None and request.camera_id != caller:
            metrics.FRAME_ERRORS.labels(reason="permission_denied").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this token is camera {caller!r}'s, not {request.camera_id!r}'s")
        if request.artifact_id != self.artifact.id:
            metrics.FRAME_ERRORS.labels(reason="artifact_mismatch").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.mismatch(request.artifact_id))
        last = await asyncio.to_thread(self.store.last_seq, request.camera_id) if request.camera_id else -1
        m = self.artifact.manifest
        return pb.HandshakeReply(
            artifact_id=self.artifact.id,
            model=m["model"]["name"],
            cut=m["cut"]["name"],
            server_version=infocut.__version__,
            last_seq=last,
        )

    async def Stream(self, request_iterator, context):
        caller = await self._caller(context)
        theirs = dict(context.invocation_metadata()).get(ARTIFACT_HEADER, "")
        if theirs != self.artifact.id:
            metrics.FRAME_ERRORS.labels(reason="artifact_mismatch").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.mismatch(theirs))
        metrics.STREAMS.inc()
        try:
            async for frame in request_iterator:
                yield await self.process(frame, caller)
        finally:
            metrics.STREAMS.dec()

    async def Submit(self, request, context):
        return await self.process(request, await self._caller(context))

    async def process(self, frame: pb.Frame, caller: str | None = None) -> pb.FrameResult:
        """Score and store one frame; every failure becomes this frame's error result.

        `caller`: the camera the call's token belongs to; a frame of another camera is refused alone."""
        if not frame.camera_id:
            metrics.FRAME_ERRORS.labels(reason="invalid").inc()
            return result(frame, INVALID_ARGUMENT, "camera_id is empty")
        if caller is not None and frame.camera_id != caller:
            metrics.FRAME_ERRORS.labels(reason="permission_denied").inc()
            return result(frame, PERMISSION_DENIED, f"this stream's token is camera {caller!r}'s, "
                                                    f"not {frame.camera_id!r}'s")
        if frame.artifact_id != self.artifact.id:
            metrics.FRAME_ERRORS.labels(reason="artifact_mismatch").inc()
            return result(frame, FAILED_PRECONDITION, self.mismatch(frame.artifact_id))
        async with self._camera_locks[frame.camera_id]:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            try:
                return await asyncio.to_thread(self._process, frame)
            except MissingReference as e:  # the edge answers by sending a key frame
                metrics.FRAME_ERRORS.labels(reason="missing_reference").inc()
                log.warning("camera %s seq %d rejected: %s", frame.camera_id, frame.seq, e)
                return result(frame, FAILED_PRECONDITION, f"missing reference: {e}")
            except CodecError as e:
                metrics.FRAME_ERRORS.labels(reason="corrupt").inc()
                log.warning("camera %s seq %d rejected: %s", frame.camera_id, frame.seq, e)
                return result(frame, INVALID_ARGUMENT, f"corrupt frame: {e}")
            except ValueError as e:  # a frame the store refuses (bad seq, camera id too long, ...)
                metrics.FRAME_ERRORS.labels(reason="invalid").inc()
                return result(frame, INVALID_ARGUMENT, str(e))
            except Exception as e:  # never let one frame take the stream down
                metrics.FRAME_ERRORS.labels(reason="internal").inc()
                log.exception("camera %s seq %d failed", frame.camera_id, frame.seq)
                return result(frame, INTERNAL, f"internal error: {type(e).__name__}")

    def _process(self, frame: pb.Frame) -> pb.FrameResult:
        stored = self.store.stored(frame.camera_id, frame.seq)
        if stored is not None:
            metrics.DUPLICATES.labels(camera_id=frame.camera_id).inc()
            return result(frame, score=stored[0], is_anomaly=stored[1], duplicate=True)
        decoded = self.decode(frame.tensor, frame.camera_id, frame.seq)
        t0 = time.perf_counter()
        scored = self.tail(decoded.tensors, self.history.previous(frame.camera_id, frame.seq))
        metrics.TAIL_SECONDS.observe(time.perf_counter() - t0)
        is_anomaly = scored.score >= self.threshold
        capture = datetime.fromtimestamp(frame.capture_time_us / 1e6, UTC)
        link = self._link(frame, decoded) if self.temporal else None
        rec = self.store.record(frame.camera_id, frame.seq, capture, scored.score, is_anomaly, len(frame.tensor),
                                link=link)
        self.history.update(frame.camera_id, frame.seq, scored.features)
        if self.temporal:
            self.references.update(frame.camera_id, frame.seq, decoded.tensors)
        if rec.duplicate:  # raced with another stream of the same camera: the first one counts
            metrics.DUPLICATES.labels(camera_id=frame.camera_id).inc()
        else:
            metrics.FRAMES.labels(camera_id=frame.camera_id).inc()
            metrics.FRAME_BYTES.observe(len(frame.tensor))
            metrics.E2E_SECONDS.observe(max(0.0, time.time() - frame.capture_time_us / 1e6))
        if rec.alert_opened is not None:
            metrics.ALERTS_OPENED.labels(camera_id=frame.camera_id).inc()
            a = rec.alert_opened
            log.info("alert %d opened: camera %s seq %d score %.3f", a.id, a.camera_id, a.start_seq, a.peak_score)
        if rec.alert_closed is not None:
            a = rec.alert_closed
            log.info("alert %d closed: camera %s seq %d..%d peak %.3f", a.id, a.camera_id, a.start_seq, a.end_seq,
                     a.peak_score)
        return result(frame, score=rec.score, is_anomaly=rec.is_anomaly, duplicate=rec.duplicate)

    def _link(self, frame: pb.Frame, decoded: DecodedFrame) -> Link:
        """The frame's link of its camera's reference chain: the bytes as they came, a key frame starting the
        chain afresh; after MAX_CHAIN delta frames a checkpoint of the codes instead, so that rebuilding the
        reference after a restart decodes at most that many frames whatever the edge's key interval."""
        length = 1 if decoded.key_frame else self._chain_length.get(frame.camera_id, MAX_CHAIN) + 1
        if length > MAX_CHAIN:
            self._chain_length[frame.camera_id] = 1
            return Link(pack_codes(decoded.tensors), checkpoint=True, starts=True)
        self._chain_length[frame.camera_id] = length
        return Link(frame.tensor, starts=decoded.key_frame)

    def _stored_reference(self, camera_id: str):
        """A restarted cloud's reference of a camera: its stored chain decoded, the last frame's codes."""
        chain = self.store.reference_chain(camera_id)
        if not chain:
            return None
        shapes = [(1, *s) for s in self.artifact.cut_shapes]
        rebuilt = References()  # each link is decoded against the one before, as the live stream was
        try:
            for link in chain:
                codes = unpack_codes(link.data, shapes) if link.checkpoint else decode_frame(
                    link.data, self.models, rebuilt.lookup(camera_id, link.seq), expect_shapes=shapes).tensors
                rebuilt.update(camera_id, link.seq, codes)
        except CodecError as e:
            log.warning("camera %s: stored reference chain unreadable (%s); waiting for a key frame", camera_id, e)
            return None
        self._chain_length[camera_id] = len(chain)
        return chain[-1].seq, codes

    def decode(self, data: bytes, camera_id: str, seq: int) -> DecodedFrame:
        """The cloud's whole decode path for one frame of a camera, alone (tests/test_fuzz.py feeds it
        hostile bytes): a frame this artifact's tail can take, or CodecError (MissingReference included)."""
        want = [(1, *shape) for shape in self.artifact.cut_shapes]  # checked before any payload is decoded
        decoded = decode_frame(data, self.models, self.references.lookup(camera_id, seq), expect_shapes=want)
        self._check(decoded)
        return decoded

    def _check(self, decoded: DecodedFrame) -> None:
        """The frame must be what this artifact's head produces: one frame, the cut's shapes and bits."""
        want = [(1, *shape) for shape in self.artifact.cut_shapes]
        shapes = [tuple(t.shape) for t in decoded.tensors]
        if shapes != want:
            raise CodecError(f"wrong shape: frame carries {shapes}, the artifact's cut is {want}")
        if decoded.bits != self.artifact.bits:
            raise CodecError(f"frame coded at {decoded.bits} bits, the artifact quantizes to {self.artifact.bits}")
