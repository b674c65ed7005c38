"""The edge agent: per camera, capture -> head -> encode -> spool -> link, each stage its own thread.

Stages hand frames over through bounded queues (edge/stages.py): with the `realtime` policy a stage
that falls behind loses the oldest queued frames (counted per stage), with `lossless` it holds the
stage before it back. Every encoded frame is appended to the camera's durable spool before it is
sent (edge/spool.py), so an outage, a slow cloud or a crash of the edge loses nothing that reached
it; a file source is also held back by a full spool in lossless mode, a live one obeys the spool's
`when_full`. The link (edge/link.py) streams the spool in seq order and trims it as results come.

Sequence numbers are given at capture, so frames dropped in realtime mode leave gaps (the cloud's
scorer relies on seq to find the frame `gap` frames earlier). After a restart numbering continues
after max(the cloud's last stored seq, the spool's last seq), and a file source interrupted in
lossless mode resumes after the last frame that reached the spool: each frame is scored once.
Several cameras run in one process, sharing nothing but it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from codec.stream import StreamEncoder
from edge import metrics
from edge.config import CameraConfig, EdgeConfig
from edge.head import Head
from edge.link import EdgeError, Link
from edge.metrics import CameraStats
from edge.preprocess import to_input
from edge.source import Source, SourceError, open_source
from edge.spool import Spool, SpoolError
from edge.stages import END, StageQueue
from infocut.artifact import load_artifact

log = logging.getLogger("infocut.edge")

PROGRESS_S = 5.0  # how often each camera logs its counters
STATE_FILE = "source.json"  # in the camera's spool folder: which source the last run read, and whether it finished

__all__ = ["Camera", "EdgeError", "run"]


class Camera:
    """One camera's pipeline; `run()` returns its counters once a file source is done (or on stop)."""

    def __init__(self, cfg: CameraConfig, backoff: tuple[float, float]) -> None:
        self.cfg = cfg
        try:
            self.artifact = load_artifact(cfg.artifact)
            sp = cfg.spool
            self.spool = Spool(sp.dir / cfg.id, cap_bytes=sp.cap_bytes, ttl_s=sp.ttl_s, when_full=sp.when_full,
                               fsync_interval=sp.fsync_interval_s)
        except (OSError, ValueError, SpoolError) as e:
            raise EdgeError(f"camera {cfg.id}: {e}") from None
        self.head = Head(self.artifact, cfg.threads)
        self.stop = threading.Event()
        self.stats = CameraStats(cfg.id, self.spool)
        metrics.register(self.stats)
        realtime = cfg.policy == "realtime"
        self.to_head = StageQueue(cfg.queue_size, realtime, lambda _: self.stats.drop("behind_head"), self.stop)
        self.to_encode = StageQueue(cfg.queue_size, realtime, lambda _: self.stats.drop("behind_encode"), self.stop)
        self.encoded_all = threading.Event()
        self.error: BaseException | None = None
        a = self.artifact
        self.encoder = StreamEncoder(a.bits, a.coder, a.entropy_models, cfg.key_interval or a.key_interval)
        self.link = Link(cfg.id, cfg.cloud, self.artifact, self.spool, self.stats, self.stop, cfg.max_inflight,
                         backoff, request_key=self.encoder.request_key)

    # -- stages ---------------------------------------------------------------------------------
    def _stage(self, body: Callable[[], None], downstream: StageQueue | None) -> threading.Thread:
        """A stage thread: an exception ends the camera with that error; the next stage is closed either way."""

        def target() -> None:
            try:
                body()
            except Exception as e:  # noqa: BLE001  (reported by run(), the stream of other cameras goes on)
                self.error = self.error or e
                log.error("event=stage_failed camera=%s error=%r", self.cfg.id, e)
            finally:
                if downstream is not None:
                    downstream.close()
                else:
                    self.encoded_all.set()

        return threading.Thread(target=target, name=f"{self.cfg.id}-{body.__name__}", daemon=True)

    def _capture(self, source: Source, seq: int, skip_through: int) -> None:
        fps = self.cfg.fps or (source.fps if self.cfg.pace and not source.live else 0.0) or 0.0
        period = 1.0 / fps if fps else 0.0
        next_at = time.monotonic()
        for cap in source:
            if self.stop.is_set() or (self.cfg.max_frames is not None and cap.index >= self.cfg.max_frames):
                break
            if cap.index <= skip_through:
                continue
            if period:
                self.stop.wait(max(0.0, next_at - time.monotonic()))
                next_at += period
            self.stats.add("captured")
            if not self.to_head.put((seq, cap)):
                self.stats.drop("shutdown")
                break
            seq += 1

    def _infer(self) -> None:
        timer = metrics.HEAD_SECONDS.labels(self.cfg.id)
        while (item := self.to_head.get()) is not END:
            seq, cap = item
            t0 = time.perf_counter()
            codes = self.head(to_input(cap.image, self.artifact.input_size)[None])
            timer.observe(time.perf_counter() - t0)
            self.stats.add("processed")
            if not self.to_encode.put((seq, cap.time, cap.index, codes)):
                self.stats.drop("shutdown")
                break

    def _encode(self) -> None:
        sizes = metrics.FRAME_BYTES.labels(self.cfg.id)
        hold_back = self.cfg.policy == "lossless" and not self.cfg.live  # a file waits for room in the spool
        while (item := self.to_encode.get()) is not END:
            seq, t, index, codes = item
            data = self.encoder.encode(codes, seq)
            sizes.observe(len(data))
            self.stats.add("encoded_bytes", len(data))
            if not self.spool.append(seq, int(t * 1e6), index, data, block=hold_back) and self.stop.is_set():
                self.stats.drop("shutdown")  # a refused frame is counted by the spool, an interrupted one here

    # -- resuming a file ------------------------------------------------------------------------
    def _resume_point(self) -> int:
        """The last source index already spooled by an unfinished run of this very file (-1: start over)."""
        path = self.spool.dir / STATE_FILE
        skip = -1
        if not self.cfg.live and path.exists():
            try:
                prev = json.loads(path.read_text())
            except (OSError, ValueError):
                prev = {}
            if prev.get("source") == self.cfg.source and not prev.get("done", True):
                skip = self.spool.last_index
        self._write_state(done=False)
        return skip

    def _write_state(self, done: bool) -> None:
        tmp = self.spool.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"source": self.cfg.source, "done": done}))
        tmp.replace(self.spool.dir / STATE_FILE)

    # -- running --------------------------------------------------------------------------------
    def run(self) -> CameraStats:
        try:
            source = open_source(self.cfg.source)
        except SourceError as e:
            self.spool.close()
            raise EdgeError(f"camera {self.cfg.id}: {e}") from None
        threads: list[threading.Thread] = []
        finished = False
        try:
            skip = self._resume_point()
            cloud_last = self.link.last_seq()
            if cloud_last is None:
                return self.stats
            first_seq = max(cloud_last, self.spool.last_seq) + 1
            log.info("event=start camera=%s source=%r policy=%s cloud=%s first_seq=%d resume_after_index=%d "
                     "spooled=%d", self.cfg.id, self.cfg.source, self.cfg.policy, self.cfg.cloud, first_seq, skip,
                     self.spool.depth[0])
            threads = [
                self._stage(lambda: self._capture(source, first_seq, skip), self.to_head),
                self._stage(self._infer, self.to_encode),
                self._stage(self._encode, None),
                threading.Thread(target=self._report, daemon=True),
            ]
            for t in threads:
                t.start()
            self.link.run(finished=self.encoded_all.is_set)
            finished = self.encoded_all.is_set() and self.spool.depth[0] == 0 and not self.stop.is_set()
        finally:
            self.stop.set()
            source.close()
            self.spool.close()  # wakes an append waiting for room
            for t in threads:
                t.join(timeout=10)
            for q in (self.to_head, self.to_encode):
                for _ in range(len(q)):
                    self.stats.drop("shutdown")
            if finished and self.error is None:
                self._write_state(done=True)
            log.info(self.stats.line("summary"))
        if self.error is not None:
            raise EdgeError(f"camera {self.cfg.id}: {self.error}")
        return self.stats

    def _report(self) -> None:
        while not self.stop.wait(PROGRESS_S):
            log.info(self.stats.line("progress"))


def run(cfg: EdgeConfig) -> list[CameraStats]:
    """Run every camera of `cfg` until its file is done (live sources: until interrupted)."""
    cameras = [Camera(c, cfg.backoff_s) for c in cfg.cameras]
    try:
        metrics.serve(cfg.metrics_port, cfg.metrics_host)
    except OSError as e:
        raise EdgeError(f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {e.strerror}") from None
    errors: list[BaseException] = []

    def one(cam: Camera) -> None:
        try:
            cam.run()
        except Exception as e:  # noqa: BLE001  (one camera's failure must not go unnoticed nor stop the others)
            errors.append(e)
            log.error("event=camera_failed camera=%s error=%r", cam.cfg.id, str(e))

    threads = [threading.Thread(target=one, args=(c,), name=c.cfg.id, daemon=True) for c in cameras]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        for cam in cameras:
            cam.stop.set()
        for t in threads:
            t.join(timeout=20)
        raise
    if errors:
        raise EdgeError("; ".join(map(str, errors)))
    return [c.stats for c in cameras]
