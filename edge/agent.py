"""The edge agent: per camera, capture (and resize) -> head -> encode -> outbox -> link, each stage its own thread
(the head: one per head worker, whole frames side by side, handed on in order).

Stages hand frames over through bounded queues (edge/stages.py): with the `realtime` policy a stage
that falls behind loses the oldest queued frames (counted per stage), with `lossless` it holds the
stage before it back. Encoded frames go to the outbox (edge/outbox.py): memory while the link keeps
up, the durable spool (edge/spool.py) when it is down or behind, or always with `spool.mode: always`.
A file source is held back by a full spool in lossless mode, a live one obeys the spool's
`when_full`. The link (edge/link.py) sends the outbox in seq order and resolves frames as results come.

Sequence numbers are given at capture, so frames dropped in realtime mode leave gaps (the cloud's
scorer relies on seq to find the frame `gap` frames earlier). A live camera starts capturing at once,
numbering after the spool's last seq, whether or not the cloud answers yet. A file source is numbered
`seq0 + its position` for as long as it is unfinished (source.json in the spool folder): after a
restart it goes on after the last frame the cloud holds or the spool delivers in order, so each frame
is scored once, in order, even when frames held in memory died with the process.
Several cameras run in one process, sharing nothing but it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from codec.stream import StreamEncoder
from edge import metrics
from edge import providers as eps
from edge.config import CameraConfig, EdgeConfig
from edge.head import Head
from edge.link import EdgeError, Link
from edge.metrics import CameraStats
from edge.outbox import Outbox
from edge.preprocess import one_opencv_thread, to_input
from edge.source import Source, SourceError, open_source
from edge.spool import Spool, SpoolError
from edge.stages import END, InOrder, StageQueue, batch_scheduling, lower_priority
from infocut import tls
from infocut.artifact import Artifact, load_artifact

log = logging.getLogger("infocut.edge")

PROGRESS_S = 5.0  # how often each camera logs its counters
STATE_FILE = "source.json"  # in the camera's spool folder: the file source, its seq0, and whether it finished

__all__ = ["Camera", "EdgeError", "run"]


class Camera:
    """One camera's pipeline; `run()` returns its counters once a file source is done (or on stop)."""

    def __init__(self, cfg: CameraConfig, backoff: tuple[float, float], cameras: int = 1) -> None:
        """`cameras`: how many cameras this process runs, which share its cores."""
        self.cfg = cfg
        try:
            self.artifact = load_artifact(cfg.artifact)
            sp = cfg.spool
            self.spool = Spool(sp.dir / cfg.id, cap_bytes=sp.cap_bytes, ttl_s=sp.ttl_s, when_full=sp.when_full,
                               fsync_interval=sp.fsync_interval_s)
            self.outbox = Outbox(self.spool, cfg.outbox_frames, sp.mode)
            credentials = None if cfg.tls is None else tls.channel_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
            token = cfg.bearer_token()
            self.heads = head_workers(self.artifact, cfg, cameras)
        except (OSError, ValueError, SpoolError) as e:  # ConfigError, TLSError, ProviderError are ValueErrors
            if hasattr(self, "spool"):
                self.spool.close()
            raise EdgeError(f"camera {cfg.id}: {e}") from None
        one_opencv_thread()
        self.stop = threading.Event()
        self.stats = CameraStats(cfg.id, self.outbox, eps.short(self.heads[0].providers))
        metrics.register(self.stats)
        log.info("event=head camera=%s providers=%s workers=%d tls=%s token=%s", cfg.id, self.stats.providers,
                 len(self.heads), "off" if cfg.tls is None else ("mutual" if cfg.tls.cert else "on"),
                 "set" if token else "none")
        realtime = cfg.policy == "realtime"
        self.to_head = StageQueue(cfg.queue_size, realtime, lambda _: self.stats.drop("behind_head"), self.stop)
        self.to_encode = StageQueue(cfg.queue_size, realtime, lambda _: self.stats.drop("behind_encode"), self.stop)
        self.in_order = InOrder(self.to_head, self.to_encode.put, window=2 * len(self.heads))
        self._heads_running = len(self.heads)
        self._heads_lock = threading.Lock()
        self.encoded_all = threading.Event()
        self.error: BaseException | None = None
        self.seq_floor = 0  # capture numbers at or above this (a live camera's first handshake may raise it)
        a = self.artifact
        self.encoder = StreamEncoder(a.bits, a.coder, a.entropy_models, cfg.key_interval or a.key_interval)
        self.spool.on_drop = self.encoder.request_key  # a dropped coded frame breaks the chain of delta frames
        self.link = Link(cfg.id, cfg.cloud, self.artifact, self.outbox, self.stats, self.stop, cfg.max_inflight,
                         backoff, self.encoder.request_key, credentials, token)

    # -- stages ---------------------------------------------------------------------------------
    def _stage(self, name: str, body: Callable[[], None], done: Callable[[], None], nice: int = 0) -> threading.Thread:
        """A stage thread: an exception ends the camera with that error; `done` (closing the next stage) runs
        either way. `nice`: added to the thread's niceness (Linux: per thread; elsewhere ignored)."""

        def target() -> None:
            lower_priority(nice)
            try:
                body()
            except Exception as e:  # noqa: BLE001  (reported by run(), the stream of other cameras goes on)
                self.error = self.error or e
                log.error("event=stage_failed camera=%s error=%r", self.cfg.id, e)
            finally:
                done()

        return threading.Thread(target=target, name=f"{self.cfg.id}-{name}", daemon=True)

    def _head_done(self) -> None:
        """The last head worker to finish closes the encode stage's queue."""
        with self._heads_lock:
            self._heads_running -= 1
            if self._heads_running == 0:
                self.to_encode.close()

    def _capture(self, source: Source, seq: int, skip: int) -> None:
        """Frames of `source` from the `skip`-th on, numbered from `seq`."""
        fps = self.cfg.fps or (source.fps if self.cfg.pace and not source.live else 0.0) or 0.0
        period = 1.0 / fps if fps else 0.0
        next_at = time.monotonic()
        for position, cap in enumerate(source):
            if self.stop.is_set() or (self.cfg.max_frames is not None and cap.index >= self.cfg.max_frames):
                break
            if position < skip:
                continue
            seq = max(seq, self.seq_floor)
            if period:
                self.stop.wait(max(0.0, next_at - time.monotonic()))
                next_at += period
            self.stats.add("captured")
            # resized here, off the head's thread: the head is the slowest stage, its thread only runs it
            if not self.to_head.put((seq, cap.time, cap.index, to_input(cap.image, self.artifact.input_size))):
                self.stats.drop("shutdown")
                break
            seq += 1

    def _infer(self, head: Head) -> None:
        timer = metrics.HEAD_SECONDS.labels(self.cfg.id)
        while (taken := self.in_order.take())[0] is not END:
            (seq, t, index, image), ticket = taken
            t0 = time.perf_counter()
            if self.cfg.test_head_delay_s:
                time.sleep(self.cfg.test_head_delay_s)
            try:
                codes = head(image[None])
            except Exception:
                self.in_order.close()  # the other workers stop too: this frame's successors cannot pass it
                self.stats.drop("head_error")
                raise
            timer.observe(time.perf_counter() - t0)
            self.stats.add("processed")
            if not self.in_order.done(ticket, (seq, t, index, codes)):
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
            if not self.outbox.put(seq, int(t * 1e6), index, data, block=hold_back, cancel=self.stop) \
                    and self.stop.is_set():
                self.stats.drop("shutdown")  # a refused frame is counted by the spool, an interrupted one here

    # -- numbering ------------------------------------------------------------------------------
    def _file_start(self, cloud_last: int) -> tuple[int, int]:
        """(first seq, frames of the file to skip) for a file source, given the cloud's last stored seq.

        An unfinished run of the same file keeps its numbering (seq = seq0 + position) and goes on after
        the last frame delivered: the spool's frames are replayed first when they follow on from it; when
        frames in between died in memory with the last process, the spool is cleared and read again."""
        prev: dict = {}
        path = self.spool.dir / STATE_FILE
        if path.exists():
            try:
                prev = json.loads(path.read_text())
            except (OSError, ValueError):
                prev = {}
        delivered = max(cloud_last, self.spool.watermark)
        if prev.get("source") == self.cfg.source and not prev.get("done", True) and isinstance(prev.get("seq0"), int):
            seq0 = prev["seq0"]
            if self.spool.depth[0] and self.spool.first_unresolved() > delivered + 1:
                lost = self.spool.clear(delivered)
                log.warning("event=spool_reread camera=%s reason='frames held in memory were lost' spooled=%d "
                            "resume_after_seq=%d", self.cfg.id, lost, delivered)
            last = max(delivered, self.spool.last_seq)
        else:
            seq0 = max(cloud_last, self.spool.last_seq) + 1
            last = seq0 - 1
        self._write_state(done=False, seq0=seq0)
        return last + 1, last + 1 - seq0

    def _on_handshake(self, first_seq: int) -> Callable[[int], None]:
        """A live camera numbers before it reaches the cloud; the first handshake checks that numbering."""
        seen = threading.Event()

        def check(cloud_last: int) -> None:
            if seen.is_set():
                return
            seen.set()
            if cloud_last >= first_seq:
                log.warning("event=seq_conflict camera=%s first_seq=%d cloud_last_seq=%d action='drop frames "
                            "numbered below it, number on after it' (spool folder wiped, or camera id reused?)",
                            self.cfg.id, first_seq, cloud_last)
                self.link.conflict = range(first_seq, cloud_last + 1)
                self.seq_floor = cloud_last + 1

        return check

    def _write_state(self, done: bool, seq0: int) -> None:
        tmp = self.spool.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"source": self.cfg.source, "done": done, "seq0": seq0}))
        tmp.replace(self.spool.dir / STATE_FILE)

    # -- running --------------------------------------------------------------------------------
    def run(self) -> CameraStats:
        try:
            source = open_source(self.cfg.source, self.cfg.stall_timeout_s,
                                 on_reopen=lambda _: self.stats.add("source_reopens"),
                                 decode_threads=self.cfg.decode_threads)
        except SourceError as e:
            self.outbox.close()
            raise EdgeError(f"camera {self.cfg.id}: {e}") from None
        threads: list[threading.Thread] = []
        finished = False
        seq0 = 0
        try:
            if self.cfg.live:  # capture at once, reachable cloud or not
                first_seq, skip = self.spool.last_seq + 1, 0
                self.link.on_handshake = self._on_handshake(first_seq)
            else:
                cloud_last = self.link.last_seq()
                if cloud_last is None:
                    return self.stats
                first_seq, skip = self._file_start(cloud_last)
                seq0 = first_seq - skip
            # resume_after_index: the position in the file of the last frame already handled (-1: none)
            log.info("event=start camera=%s source=%r policy=%s spool_mode=%s cloud=%s first_seq=%d "
                     "resume_after_index=%d spooled=%d head_workers=%d", self.cfg.id, self.cfg.source,
                     self.cfg.policy, self.cfg.spool.mode, self.cfg.cloud, first_seq, skip - 1, self.spool.depth[0],
                     len(self.heads))
            threads = [
                self._stage("_capture", lambda: self._capture(source, first_seq, skip), self.to_head.close,
                            self.cfg.side_nice),
                *(self._stage(f"_infer{k}", lambda h=head: self._infer(h), self._head_done)
                  for k, head in enumerate(self.heads)),
                self._stage("_encode", self._encode, self.encoded_all.set, self.cfg.side_nice),
            ]
            for t in threads:
                t.start()
            threading.Thread(target=self._report, daemon=True).start()
            self.link.run(finished=self.encoded_all.is_set)
            finished = self.encoded_all.is_set() and self.outbox.depth[0] == 0 and not self.stop.is_set()
        finally:
            self.stop.set()
            source.close()
            for t in threads:
                t.join(timeout=10)
            for _ in range(len(self.to_head) + len(self.in_order.pending) + len(self.to_encode)):
                self.stats.drop("shutdown")
            if finished and self.error is None and not self.cfg.live:
                self._write_state(done=True, seq0=seq0)
            self.outbox.close()  # frames still in memory go to the spool
            log.info(self.stats.line("summary"))
        if self.error is not None:
            raise EdgeError(f"camera {self.cfg.id}: {self.error}")
        return self.stats

    def _report(self) -> None:
        while not self.stop.wait(PROGRESS_S):
            log.info(self.stats.line("progress"))


def head_workers(artifact: Artifact, cfg: CameraConfig, cameras: int = 1) -> list[Head]:
    """The camera's head sessions: `head_workers` of them (0: 2 on a CPU-only head with 2+ cores to itself, else
    1), each with `threads` intra-op threads (0: its share of the cores this process may use, split among the
    `cameras` it runs and their head workers, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpu_only = eps.resolve(cfg.providers) == [eps.NAMES["cpu"]]
    n = cfg.head_workers or (2 if cpu_only and cores >= 2 * cameras else 1)
    threads = cfg.threads or max(1, cores // (n * cameras))  # onnxruntime's default counts cores it may not use
    return [Head(artifact, threads, cfg.providers, cfg.spin) for _ in range(n)]


def run(cfg: EdgeConfig) -> list[CameraStats]:
    """Run every camera of `cfg` until its file is done (live sources: until interrupted). With `cpu_scheduling:
    batch`, the calling thread and every thread the agent starts run under SCHED_BATCH (edge/stages.py)."""
    took = cfg.cpu_scheduling == "batch" and batch_scheduling()
    log.info("event=scheduling cpu_scheduling=%s", "batch" if took else "normal")
    cameras: list[Camera] = []
    try:
        for c in cfg.cameras:
            cameras.append(Camera(c, cfg.backoff_s, len(cfg.cameras)))
    except EdgeError:
        for cam in cameras:
            cam.outbox.close()
        raise
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
        # Not join(): a KeyboardInterrupt inside join() marks the thread stopped on CPython < 3.13
        # (bpo-45274), and the joins below would then return at once, before the summary and the spool.
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        for cam in cameras:
            cam.stop.set()
        for t in threads:
            t.join(timeout=20)
        raise
    if errors:
        raise EdgeError("; ".join(map(str, errors)))
    return [c.stats for c in cameras]
