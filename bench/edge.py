"""The edge's throughput: the real agent's full pipeline against bare onnxruntime on the same head and frames.

What is timed, each in its own process pinned to `--cores` CPUs (2 by default: the issue's target is
30 fps and at most 10% overhead on 2 cores):

- bare:   head.onnx alone in onnxruntime, batch 1, on frames decoded and preprocessed beforehand, with
          `--threads` intra-op threads (2 by default) laid out three ways (BARE_LAYOUTS: one session whose
          threads spin between ops, onnxruntime's default; one whose threads sleep; two sessions side by
          side on whole frames). The fastest is the baseline: the overhead is against bare at its best;
- loop:   a second point of reference, not the baseline: what a user's own script does without infocut,
          decoding, resizing and inferring each frame of the source in turn (one session, threads spinning);
- sink:   the edge agent (edge/agent.py: capture + preprocess -> head -> encode -> spool -> gRPC), sending
          over loopback to a sink process that acks each frame at once: the edge alone;
- cloud:  the same agent sending to a real `infocut cloud` on loopback (decode, tail, SQLite); the cloud
          is not pinned, but on a 2-core machine it shares the edge's cores and slows it.

Overhead is the pipeline's extra time per frame over bare (bare fps / pipeline fps - 1), and its extra
CPU per frame (pipeline CPU / bare CPU - 1), both at the steady rate: from the frame done 10% into a run
to the last (bare: out of the head; the agent: acked), as on a stream that runs for months. The whole
run's rate, with the agent's start (connect, open the source, fill the stages), is reported beside it.
Per-stage wall and CPU times are the agent's own calls, timed in place (the stages run in parallel
threads, so they do not add up to the frame period); send is the time from the link taking a frame off
the spool to the cloud's result. CPU per thread comes from /proc (onnxruntime's pool, the head thread,
encode, capture, gRPC). Peak RSS is each process's own (getrusage), as are its page faults and context
switches (JSON only). `--repeat R` interleaves R runs of each mode and keeps the median, with a bootstrap
interval of the paired overhead's median. The floor (`side_alone`): decoding, resizing and coding, each
timed alone in the baseline's process, against its CPU per frame: what the agent adds whatever its
design, before any gRPC, queue or sharing of the cores. Then the
sweep times the head alone at other cuts, with a learned bottleneck's encoder and at smaller inputs
(each exported afresh by splitter/, which needs torch), with its FLOPs: where 30 fps is reached.

The agent runs with its own defaults (on 2 cores: two head workers of one thread each, threads
sleeping between ops, SCHED_BATCH); `--head-workers`, `--spin` and `--cpu-scheduling` change them
(the last for bare too). The sink's CPU is reported too: on
one machine it shares the edge's cores, which a real cloud would not. On a machine shared with other
work the wall figures swing (the load average is printed and kept in the JSON); the CPU figures hold
up better.

    python bench/edge.py                     # bundled clip, demo artifact: about two minutes on 2 idle cores
    python bench/edge.py --frames 180 --repeat 3 --threads 2 --cores 2 --artifact artifacts/demo
    python bench/edge.py --source ../shared/data/ucsd_ped2/testing/frames/01 --json /tmp/edge-ped2.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

from infocut.settings import DEMO_ARTIFACT, DEMO_CLIP

WARMUP = 3  # head runs before timing, in every mode (the first onnxruntime runs are slower)
STEADY_SKIP = 0.1  # the share of a run's first frames left out of its steady rate (the stages filling)
# bare onnxruntime's layouts of `--threads` threads; the fastest is the baseline (which one wins depends on the CPU)
BARE_LAYOUTS = {"spin": "one session, threads spin between ops (onnxruntime's default)",
                "sleep": "one session, threads sleep between ops",
                "workers": "two sessions side by side on whole frames, half the threads each"}
# Not a baseline of the overhead goal, a second point of reference: what a user's own script does without infocut.
LOOP = "decode, resize and infer each frame of the source in turn, one session spinning (a plain script)"
# (cut, bottleneck width K; 0: none) of the sweep's MobileNetV2 heads. K: the linear encoder of the learned
# bottleneck (splitter/bottleneck.py, "linear+bg" at stride 1): the per-location normal mean subtracted, a 1x1
# conv to K channels, then the quantizer.
SWEEP_HEADS = [("block2", 0), ("block3", 0), ("block3", 4), ("block3", 16), ("block5", 0)]
SWEEP_SIZES = [(240, 360), (360, 540), (480, 720)]  # Ped2's native size, 1.5x, the demo's 2x
SWEEP_FRAMES = 15
# The work the agent adds to the head per frame whatever its design: decode, resize, code. Each run alone (in the
# bare worker, one thread, nothing beside it), against bare's CPU per frame: a floor under the overhead.
SIDE_STAGES = ("capture", "preprocess", "encode")


# ---------------------------------------------------------------- in the worker processes


def pin(cores: int) -> list[int]:
    """Run this process on the first `cores` CPUs it may use; the CPUs it runs on."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, cpus)
    return cpus


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_frames(source: str, size: tuple[int, int], n: int) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The first `n` frames of `source`, preprocessed as the agent does; decode and preprocess s per frame."""
    from edge.preprocess import to_input
    from edge.source import open_source

    frames, decode_s, prep_s = [], [], []
    with open_source(source) as src:
        it = iter(src)
        while len(frames) < n:
            t0 = time.perf_counter()
            cap = next(it, None)
            if cap is None:
                break
            t1 = time.perf_counter()
            image = to_input(cap.image, size)
            decode_s.append(t1 - t0), prep_s.append(time.perf_counter() - t1)
            # Kept as a copy: the timed image is freed and its memory reused by the next, as in the agent, where
            # each frame's image is freed after the head. Keeping it would time fresh pages instead (page faults:
            # 0.73 against 0.32 ms a frame for the demo's 1 MB images).
            frames.append(image.copy())
            del image
    return frames, decode_s, prep_s


def steady(done: list[tuple[float, float]], frames: int) -> dict:
    """fps and CPU s per frame from the (wall, process CPU) at which each frame was done, leaving out the first
    STEADY_SKIP of them: the rate the pipeline keeps once full, as on a stream that runs for months. The whole
    run's figures (with the start: connect, open the source, fill the stages) are kept beside them."""
    done = sorted(done)
    k = min(max(1, int(STEADY_SKIP * frames)), len(done) - 2)
    (t0, c0), (t1, c1) = done[k], done[-1]
    n = len(done) - 1 - k
    return {"fps": n / (t1 - t0), "ms_per_frame": 1e3 * (t1 - t0) / n, "cpu_s_per_frame": (c1 - c0) / n,
            "steady_frames": n}


def paired_pct(reference: list[dict], runs: list[dict]) -> list[float]:
    """Each run's extra time per frame over the reference run of the same round, in %."""
    return [100 * (b["fps"] / x["fps"] - 1) for b, x in zip(reference, runs, strict=True)]


def median_ci(values: list[float], level: float = 0.95, resamples: int = 10_000) -> tuple[float, float]:
    """A bootstrap interval of the median of `values` (seeded: the same runs give the same interval). On a VM
    whose speed drifts between runs, it says how far the median of a few pairs may sit from the truth."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(np.asarray(values, float), size=(resamples, len(values))), axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def ort_session(path, threads: int, spin: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class ThreadCPU:
    """CPU seconds of each thread of this process, from /proc, sampled until stopped (a thread that ends
    keeps its last sample), grouped by what runs in it: where the pipeline's CPU goes, busy machine or not."""

    def __init__(self, every_s: float = 1.0) -> None:  # stage threads report as they end (at_exit)
        self.every_s, self.last, self.stop, self.lock = every_s, {}, threading.Event(), threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-cpu-sampler")

    def _sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                cpu = stat_cpu_s(f"/proc/self/task/{tid}/stat")
                comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            with self.lock:  # CPU times only grow: a thread's final time from at_exit is never undone
                prev = self.last.get(int(tid), ("", 0.0))[1]
                self.last[int(tid)] = (names.get(int(tid)) or comm, max(cpu, prev))

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self._sample()

    def at_exit(self) -> None:
        """Called by a thread as it ends: its final CPU, which the sampler would miss up to `every_s` of."""
        t = threading.current_thread()
        with self.lock:
            self.last[t.native_id] = (t.name, time.thread_time())

    def __enter__(self) -> ThreadCPU:
        self._sample()
        self.start = dict(self.last)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()

    def by_group(self, main_label: str) -> dict[str, float]:
        """CPU seconds during the run per group of threads."""
        out: dict[str, float] = defaultdict(float)
        main = threading.main_thread().native_id
        for tid, (name, cpu) in self.last.items():
            out[main_label if tid == main else thread_group(name)] += cpu - self.start.get(tid, (name, 0.0))[1]
        return dict(out)


def stat_cpu_s(path: str) -> float:
    """User + system CPU seconds from a /proc stat file (a process's, /proc/PID/stat, or a thread's)."""
    utime, stime = Path(path).read_text().rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def thread_group(name: str) -> str:
    for key, group in (("_infer", "head threads (onnxruntime callers)"), ("_capture", "capture thread (decode + preprocess)"),
                       ("_encode", "encode thread (encode + spool)"), ("bench-cpu", "this sampler"),
                       ("(_report)", "reporter"),
                       ("grpc", "gRPC (C threads)"), ("default-exec", "gRPC (C threads)"),
                       ("resolver", "gRPC (C threads)"), ("event_engine", "gRPC (C threads)"),
                       ("Thread-", "other Python threads (gRPC request iterator)"),
                       ("av:", "video decoding (FFmpeg's threads)")):
        if key in name:
            return group
    if name.startswith("python"):  # native threads that inherit the process name
        return "onnxruntime intra-op pool (and OpenCV's)"
    return f"other native ({name})"


def bare(args) -> dict:
    """head.onnx in plain onnxruntime on preprocessed frames, laid out as `args.layout` (BARE_LAYOUTS), or
    `loop` (LOOP: decoding and resizing the source's frames in the timed loop); also each stage's cost run alone."""
    from codec.stream import StreamEncoder
    from edge.preprocess import to_input
    from edge.source import open_source
    from edge.stages import batch_scheduling
    from infocut.artifact import load_artifact

    art = load_artifact(args.artifact)
    frames, decode_s, prep_s = load_frames(args.source, art.input_size, min(args.frames, 32))
    if args.cpu_scheduling == "batch":  # like with like: the agent's policy, before onnxruntime starts its threads
        batch_scheduling()
    n = 2 if args.layout == "workers" else 1
    sessions = [ort_session(art.head_path, max(1, args.threads // n), spin=args.layout != "sleep") for _ in range(n)]
    for sess in sessions:
        for f in frames[:WARMUP]:
            sess.run(None, {"image": f[None]})
    order = [frames[i % len(frames)] for i in range(args.frames)]  # a few distinct frames, cycled: modest RSS
    times, codes, done = [0.0] * len(order), [None] * len(order), []

    def infer(i: int, sess, image: np.ndarray) -> None:  # frame i through the head, timed
        t = time.perf_counter()
        codes[i] = sess.run(art.cut_names, {"image": image})
        end = time.perf_counter()
        times[i] = end - t
        done.append((end, cpu_s()))

    def run(k: int) -> None:  # session k runs frames k, k + n, ...
        for i in range(k, len(order), n):
            infer(i, sessions[k], order[i][None])
        threads.at_exit()

    def loop(_: int) -> None:  # the source's own frames, each decoded and resized as the agent does
        with open_source(args.source) as src:
            for i, cap in zip(range(args.frames), src):
                infer(i, sessions[0], to_input(cap.image, art.input_size)[None])
        del codes[len(done):], times[len(done):]  # a source shorter than --frames

    with ThreadCPU() as threads:
        cpu0, t0 = cpu_s(), time.perf_counter()
        workers = [threading.Thread(target=run, args=(k,), name=f"bare_infer{k}") for k in range(1, n)]
        for w in workers:
            w.start()
        (loop if args.layout == "loop" else run)(0)
        for w in workers:
            w.join()
        wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    enc, stream = [], StreamEncoder(art.bits, art.coder, art.entropy_models, art.key_interval)  # as the agent codes
    for c in codes[: len(frames)]:
        t = time.perf_counter()
        data = stream.encode(c, len(enc))
        enc.append((time.perf_counter() - t, len(data)))
    count = len(done)
    return {
        "layout": args.layout, "frames": count, "distinct_frames": count if args.layout == "loop" else len(frames),
        "wall_s": wall, **steady(done, count), "fps_whole_run": count / wall, "cpu_s_per_frame_whole_run": cpu / count,
        "head_ms_p50": 1e3 * float(np.median(times)), "peak_rss_mb": peak_rss_mb(),
        "alone_ms_p50": {"capture": 1e3 * float(np.median(decode_s)), "preprocess": 1e3 * float(np.median(prep_s)),
                         "head": 1e3 * float(np.median(times)), "encode": 1e3 * float(np.median([e[0] for e in enc]))},
        "bytes_per_frame": float(np.mean([e[1] for e in enc])), "key_frames": stream.key_frames,
        "thread_cpu_ms_per_frame": {k: 1e3 * v / count
                                    for k, v in threads.by_group("main (onnxruntime caller)").items()},
    }


class StageTimes:
    """Wall time and the calling thread's CPU time of each call of the agent's stage functions, wrapped in
    place. CPU time holds up on a busy machine where wall time does not (onnxruntime's own pool threads
    are not the caller's: the head's CPU is the process's minus the rest)."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = defaultdict(list)
        self.cpu: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def wrap(self, stage: str, fn):
        def timed(*a, **kw):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                with self.lock:
                    self.wall[stage].append(dt)
                    self.cpu[stage] += dc

        return timed


def agent(args) -> dict:
    """The real edge agent, one camera, lossless (no frame dropped), to the cloud at `args.cloud`."""
    import logging

    from edge import agent as agent_mod
    from edge.config import EdgeConfig
    from edge.stages import batch_scheduling

    logging.basicConfig(level=logging.WARNING)
    spool = Path(tempfile.mkdtemp(prefix="edge-bench-spool-"))
    try:
        cfg = EdgeConfig(artifact=args.artifact, cloud=args.cloud, spool={"dir": spool},
                         cameras=[{"id": "bench", "source": args.source, "max_frames": args.frames,
                                   "policy": "lossless", "spin": args.spin,
                                   "head_workers": args.head_workers,
                                   **({} if args.side_nice is None else {"side_nice": args.side_nice})}],
                         cpu_scheduling=args.cpu_scheduling)
        if cfg.cpu_scheduling == "batch":  # as edge.agent.run does, before the head sessions start their threads
            batch_scheduling()
        cam = agent_mod.Camera(cfg.cameras[0], cfg.backoff_s)
        timers = StageTimes()
        open_source = agent_mod.open_source

        def timed_source(*a, **kw):
            src = open_source(*a, **kw)
            src._next_frame = timers.wrap("capture", src._next_frame)
            return src

        sent_at: dict[int, float] = {}
        send_s: list[float] = []
        acked: list[tuple[float, float]] = []  # (wall, process CPU) at each frame's result
        spool_next, spool_ack = cam.outbox.next, cam.outbox.ack

        def next_(*a, **kw):
            rec = spool_next(*a, **kw)
            if rec is not None:
                sent_at[rec.seq] = time.perf_counter()
            return rec

        def ack(seq):
            now = time.perf_counter()
            if seq in sent_at:
                send_s.append(now - sent_at.pop(seq))
                acked.append((now, cpu_s()))
            return spool_ack(seq)

        dummy = np.zeros((1, *cam.artifact.input_size, 3), np.uint8)
        for head in cam.heads:
            for _ in range(WARMUP):
                head(dummy)
        agent_mod.open_source = timed_source
        agent_mod.to_input = timers.wrap("preprocess", agent_mod.to_input)
        cam.encoder.encode = timers.wrap("encode", cam.encoder.encode)
        cam.heads = [timers.wrap("head", h) for h in cam.heads]
        spooled_at = [0.0]
        append = timers.wrap("spool", cam.outbox.put)  # memory, or the disk spool when the link is behind

        def append_(*a, **kw):
            try:
                return append(*a, **kw)
            finally:
                spooled_at[0] = time.perf_counter()

        cam.outbox.put = append_
        cam.outbox.next, cam.outbox.ack = next_, ack
        stage = cam._stage

        def stage_(name, body, done, *a):  # each stage thread's CPU as it ends
            def body_():
                try:
                    body()
                finally:
                    threads.at_exit()

            return stage(name, body_, done, *a)

        cam._stage = stage_
        with ThreadCPU() as threads:
            cpu0, t0 = cpu_s(), time.perf_counter()
            stats = cam.run()
            wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    n = stats.acked
    stages = {k: 1e3 * float(np.median(v)) for k, v in timers.wall.items()}
    stages["send"] = 1e3 * float(np.median(send_s)) if send_s else float("nan")
    stage_cpu = {k: 1e3 * v / max(n, 1) for k, v in timers.cpu.items() if k != "head"}
    return {
        "stage_cpu_ms_per_frame": stage_cpu,
        "thread_cpu_ms_per_frame": {k: 1e3 * v / max(n, 1)
                                    for k, v in threads.by_group("main (the link: gRPC stream)").items()},
        "frames": n, "captured": stats.captured, "rejected": stats.rejected, "dropped": sum(stats.dropped.values()),
        "head_workers": len(cam.heads), "wall_s": wall, **steady(acked, args.frames), "fps_whole_run": n / wall,
        "edge_fps_whole_run": n / (spooled_at[0] - t0), "cpu_s_per_frame_whole_run": cpu / max(n, 1),
        "peak_rss_mb": peak_rss_mb(), "bytes_per_frame": stats.encoded_bytes / max(stats.captured, 1),
        "key_frames": cam.encoder.key_frames,
        "stage_ms_p50": stages,
    }


def sweep(args) -> dict:
    """The head alone by cut, bottleneck and input size: each exported afresh for its size as splitter/ exports
    heads (weights from build/, else random: the arithmetic is the same), with its FLOPs."""
    try:
        import torch
        from torch import nn

        from splitter.cost import model_cost
        from splitter.graphs import HeadGraph, Preprocess, Quantize
        from splitter.models.mobilenet_v2 import MEAN, STD, mobilenet_v2
        from splitter.onnxgraph import to_onnx
    except ImportError:
        return {"skipped": "needs the splitter's packages (pip install 'infocut[splitter]')"}
    import codec

    class Encoder(nn.Module):  # the linear bottleneck encoder: x - mean, 1x1 conv to K
        def __init__(self, mean: torch.Tensor, k: int):
            super().__init__()
            self.register_buffer("mean", mean)
            self.conv = nn.Conv2d(mean.shape[1], k, 1)

        def forward(self, x):
            return self.conv(x - self.mean)

    weights = REPO / "build" / "mobilenet_v2.npz"
    model = mobilenet_v2(weights if weights.exists() else None)
    names = [n for n, _ in model.named_children()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in SWEEP_SIZES:
            frames, _, _ = load_frames(args.source, (h, w), 4)
            for cut, k in SWEEP_HEADS:
                body = nn.Sequential(*list(model.children())[: names.index(cut) + 1])
                image = torch.zeros(1, h, w, 3, dtype=torch.uint8)
                pre = Preprocess(MEAN, STD)
                with torch.no_grad():
                    cut_shape = body(pre(image)).shape[1:]
                head = nn.Sequential(body, Encoder(torch.zeros(1, *cut_shape), k)) if k else body
                c = k or cut_shape[0]
                q = codec.QuantParams(bits=8, scale=np.ones(c, np.float32), zero_point=np.zeros(c, np.float32), axis=1)
                path = Path(tmp) / "head.onnx"
                path.write_bytes(to_onnx(HeadGraph(pre, head, [Quantize(q)]), (image,), ["image"], ["codes"])
                                 .SerializeToString())
                mflops = model_cost(model, (h, w), upto=cut).flops / 1e6 + 2 * cut_shape[0] * k * cut_shape[1:].numel() / 1e6
                sess = ort_session(path, args.threads)
                for f in frames[:2]:
                    sess.run(None, {"image": f[None]})
                times, cpu0 = [], cpu_s()
                for i in range(SWEEP_FRAMES):
                    t0 = time.perf_counter()
                    sess.run(None, {"image": frames[i % len(frames)][None]})
                    times.append(time.perf_counter() - t0)
                ms = 1e3 * float(np.median(times))  # the median: a busy machine's bursts hit a few runs
                rows.append({"cut": cut, "bottleneck_k": k, "height": h, "width": w, "head_mflops": mflops,
                             "ms_per_frame": ms, "fps": 1e3 / ms, "cpu_ms_per_frame": 1e3 * (cpu_s() - cpu0) / SWEEP_FRAMES})
    return {"frames_each": SWEEP_FRAMES, "weights": "imagenet" if weights.exists() else "random", "rows": rows}


def serve_sink(args) -> None:
    """A gRPC cloud that acks each frame as it comes, without decoding it: what the edge costs alone."""
    from concurrent import futures

    import grpc

    from infocut.artifact import load_artifact
    from protos import infocut_pb2 as pb
    from protos import infocut_pb2_grpc as pb_grpc

    artifact_id = load_artifact(args.artifact).id

    class Sink(pb_grpc.IngestServicer):
        def Handshake(self, request, context):
            return pb.HandshakeReply(artifact_id=artifact_id, last_seq=-1)

        def Stream(self, request_iterator, context):
            for frame in request_iterator:
                yield pb.FrameResult(camera_id=frame.camera_id, seq=frame.seq, status=pb.Status(code=0))

    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_IngestServicer_to_server(Sink(), server)
    server.add_insecure_port(f"127.0.0.1:{args.serve_sink}")
    server.start()
    server.wait_for_termination()


def worker(args) -> None:
    args.cpus = pin(args.cores)
    out = {"bare": bare, "agent": agent, "sweep": sweep}[args.worker](args)
    out["cpus"] = args.cpus
    r = resource.getrusage(resource.RUSAGE_SELF)
    out["rusage"] = {"minflt": r.ru_minflt, "nvcsw": r.ru_nvcsw, "nivcsw": r.ru_nivcsw}
    Path(args.out).write_text(json.dumps(out))


# ---------------------------------------------------------------- the driver


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(args, mode: str, **extra) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--worker", mode, "--out", f.name, "--frames", str(args.frames),
               "--threads", str(args.threads), "--cores", str(args.cores), "--artifact", str(args.artifact),
               "--source", args.source] + (["--spin"] if args.spin else []) \
            + ([] if args.side_nice is None else ["--side-nice", str(args.side_nice)]) \
            + ["--head-workers", str(args.head_workers), "--cpu-scheduling", args.cpu_scheduling]
        for k, v in extra.items():
            cmd += [f"--{k}", str(v)]
        subprocess.run(cmd, check=True, cwd=REPO)
        return json.loads(Path(f.name).read_text())


def wait_grpc(address: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no server on {address} after {timeout:.0f} s") from None


@contextlib.contextmanager
def server(cmd: list[str], address: str):
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_grpc(address, proc)
        except RuntimeError:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        yield lambda: stat_cpu_s(f"/proc/{proc.pid}/stat")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_mode(args, mode: str) -> dict:
    """One timed run: bare onnxruntime in one of its layouts ("bare:spin", ...), or the agent against a fresh
    sink or cloud."""
    if mode.startswith("bare:") or mode == "loop":
        return run_worker(args, "bare", layout=mode.removeprefix("bare:"))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:  # the cloud's database
        cmd = [sys.executable, __file__, "--serve-sink", str(port), "--artifact", str(args.artifact)] \
            if mode == "sink" else \
            [sys.executable, "-m", "infocut", "cloud", "--artifact", str(args.artifact), "--grpc-port", str(port),
             "--http-port", str(free_port()), "--host", "127.0.0.1", "--db", f"sqlite:///{tmp}/cloud.db"]
        with server(cmd, f"127.0.0.1:{port}") as server_cpu_s:
            cpu0 = server_cpu_s()
            out = run_worker(args, "agent", cloud=f"127.0.0.1:{port}")
            # the receiver's CPU while the agent ran: on one machine it shares the edge's cores
            out["receiver_cpu_s_per_frame"] = (server_cpu_s() - cpu0) / max(out["frames"], 1)
            return out


def print_report(result: dict, console) -> None:
    from rich.table import Table

    bare_ = result["bare"]
    t = Table(title=f"edge throughput: {result['artifact_desc']}, {result['frames']} frames, pinned to "
                    f"{len(bare_['cpus'])} CPUs; bare: {result['threads']} onnxruntime threads in all")
    for col in ("mode", "fps", "whole-run fps", "ms/frame", "overhead", "paired", "CPU ms/f", "CPU overhead", "RSS MB",
                "B/frame"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for layout, r in result["bare_layouts"].items():
        t.add_row(f"bare ORT: {layout}" + (" (baseline)" if layout == bare_["layout"] else ""),
                  f"{r['fps']:.1f}", f"{r['fps_whole_run']:.1f}", f"{r['ms_per_frame']:.1f}", "", "",
                  f"{1e3 * r['cpu_s_per_frame']:.1f}", "",
                  f"{r['peak_rss_mb']:.0f}", "")
    lp = result["loop"]
    t.add_row("plain loop: decode + resize + head", f"{lp['fps']:.1f}", f"{lp['fps_whole_run']:.1f}",
              f"{lp['ms_per_frame']:.1f}", "", "", f"{1e3 * lp['cpu_s_per_frame']:.1f}", "", f"{lp['peak_rss_mb']:.0f}", "")
    modes = [m for m in ("sink", "cloud") if result.get(m)]
    for mode in modes:
        r = result[mode]
        t.add_row(f"agent>{mode} ({r['head_workers']} head{'s' * (r['head_workers'] > 1)})", f"{r['fps']:.1f}",
                  f"{r['fps_whole_run']:.1f}", f"{r['ms_per_frame']:.1f}",
                  f"{r['overhead_pct']:+.1f}%", f"{r['overhead_pct_paired']:+.1f}%", f"{1e3 * r['cpu_s_per_frame']:.1f}",
                  f"{r['cpu_overhead_pct']:+.1f}%", f"{r['peak_rss_mb']:.0f}", f"{r['bytes_per_frame']:,.0f}")
    console.print(t)
    s = Table(title="ms per frame by stage: wall (median) in the agent's threads, the agent's CPU, and wall "
                    "with each stage run alone")
    s.add_column("stage")
    for m in modes:
        s.add_column(f"{m} wall", justify="right")
        s.add_column(f"{m} CPU", justify="right")
    s.add_column("alone", justify="right")
    for stage in ("capture", "preprocess", "head", "encode", "spool", "send", "other"):
        cells = []
        for m in modes:
            r = result[m]
            cpu = r["stage_cpu_ms_per_frame"].get(stage)
            if stage == "head":
                cpu = 1e3 * bare_["cpu_s_per_frame"]
            if stage == "other":  # what is left of the agent's CPU: gRPC, the link, queues, onnxruntime spinning
                cpu = 1e3 * (r["cpu_s_per_frame"] - bare_["cpu_s_per_frame"]) - sum(r["stage_cpu_ms_per_frame"].values())
            wall = r["stage_ms_p50"].get(stage)
            cells += ["" if wall is None else f"{wall:.1f}", "" if cpu is None else f"{cpu:.1f}"]
        alone = bare_["alone_ms_p50"].get(stage)
        s.add_row(stage, *cells, "" if alone is None else f"{alone:.1f}")
    console.print(s)
    console.print(f"fps, ms/frame and CPU: the steady rate, frames done (bare: through the head; the agent: acked by "
                  f"the cloud) per second after the first {STEADY_SKIP:.0%} of a run; whole-run fps: frames over the "
                  "whole run, the agent's start (connect, open the source, fill the stages) included. A real cloud "
                  "on the same CPUs slows both.")
    console.print("bare layouts: " + "; ".join(f"{k}: {v}" for k, v in BARE_LAYOUTS.items()))
    for m in modes:
        lo, hi = result[m]["overhead_pct_paired_ci95"]
        console.print(f"{m}: paired overhead {result[m]['overhead_pct_paired']:+.1f}%, 95% bootstrap interval of "
                      f"its median {lo:+.1f}% .. {hi:+.1f}% over {len(result[m]['overhead_pct_runs'])} pairs")
    console.print(f"plain loop: {LOOP}; not the baseline but what infocut adds over a user's own script: "
                  + ", ".join(f"{m} {result[m]['vs_loop_pct_paired']:+.1f}% (paired, 95% interval "
                              f"{result[m]['vs_loop_pct_paired_ci95'][0]:+.1f}% .. {result[m]['vs_loop_pct_paired_ci95'][1]:+.1f}%)"
                              for m in modes))
    console.print("overhead: against the fastest bare layout (the baseline); paired: each agent run against that "
                  "layout's run just before it. The receiver's own CPU per frame (on one machine it shares "
                  "these cores; a real cloud would not): "
                  + ", ".join(f"{m} {1e3 * result[m]['receiver_cpu_s_per_frame']:.1f} ms" for m in modes))
    side = result["side_alone"]
    console.print("floor: the agent's own work per frame, each stage run alone ("
                  + " + ".join(f"{k} {v:.2f}" for k, v in side["ms_per_frame"].items())
                  + f" ms), is {side['pct_of_bare_cpu']:.1f}% of bare's CPU per frame before any gRPC, queue or "
                  "sharing of the cores")
    console.print("head CPU: bare's; other: the agent's CPU less bare's head and the stages above (gRPC, the link, "
                  "queues, onnxruntime spinning); send: from the link taking a frame off the spool to its result")
    th = Table(title="CPU ms per frame by thread (from /proc): where the agent's CPU goes")
    th.add_column("threads")
    th.add_column("bare", justify="right")
    for m in modes:
        th.add_column(m, justify="right")
    groups = sorted({g for m in ["bare", *modes] for g in result[m].get("thread_cpu_ms_per_frame", {})})
    for g in groups:
        th.add_row(g, *[f"{result[m].get('thread_cpu_ms_per_frame', {}).get(g, 0.0):.1f}" for m in ["bare", *modes]])
    console.print(th)
    rows = result.get("sweep", {}).get("rows")
    if rows:
        w = Table(title=f"head alone by cut, bottleneck and input size (bare onnxruntime, {result['threads']} threads, "
                        f"median of {result['sweep']['frames_each']} runs)")
        for col in ("cut", "bottleneck K", "input", "MFLOPs", "ms/frame", "fps", ">= 30 fps", "CPU ms/frame"):
            w.add_column(col, justify="right")
        for r in rows:
            w.add_row(r["cut"], str(r["bottleneck_k"] or "-"), f"{r['height']}x{r['width']}", f"{r['head_mflops']:,.0f}",
                      f"{r['ms_per_frame']:.1f}", f"{r['fps']:.1f}", "yes" if r["fps"] >= 30 else "no",
                      f"{r['cpu_ms_per_frame']:.1f}")
        console.print(w)
    runs = {f"bare, {BARE_LAYOUTS[k]}": r for k, r in result["bare_layouts"].items()}
    runs.update({"plain loop": result["loop"], **{m: result[m] for m in modes}})
    for mode, r in runs.items():
        if len(r.get("fps_runs", [])) > 1:
            console.print(f"{mode}: fps per run {', '.join(f'{x:.1f}' for x in r['fps_runs'])}")
    load = ", ".join(f"{x:.1f}" for x in result["loadavg_start"]) + " -> " + ", ".join(
        f"{x:.1f}" for x in result["loadavg_end"])
    console.print(f"load average (1, 5, 15 min) {load} on {os.cpu_count()} CPUs; this bench alone keeps about "
                  f"{result['cores']} busy, more means other work shared the CPUs and the figures are contended")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=180, help="frames per run (the bundled clip has 180)")
    parser.add_argument("--threads", type=int, default=2, help="bare onnxruntime's intra-op threads in all (the "
                        "agent takes its own default: threads shared among its head workers)")
    parser.add_argument("--head-workers", type=int, default=0, help="the agent's head_workers (0: its default)")
    parser.add_argument("--cores", type=int, default=2, help="pin the edge's processes to this many CPUs")
    parser.add_argument("--artifact", type=Path, default=DEMO_ARTIFACT)
    parser.add_argument("--source", default=str(DEMO_CLIP), help="video file or folder of frames (e.g. a Ped2 video)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "edge.json")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved; the median is reported")
    parser.add_argument("--cpu-scheduling", choices=("batch", "normal"), default="batch", help="the scheduling "
                        "policy of every timed process, bare and agent alike (the agent's cpu_scheduling; default: "
                        "its default, batch)")
    parser.add_argument("--side-nice", type=int, help="the agent's side_nice (niceness of its capture and encode "
                        "threads; default: the agent's default)")
    parser.add_argument("--spin", action="store_true", help="the agent's onnxruntime threads spin-wait between ops "
                        "(the edge's `spin: true`; bare runs each layout as BARE_LAYOUTS says)")
    parser.add_argument("--no-cloud", action="store_true", help="skip the run against a real cloud")
    parser.add_argument("--no-sweep", action="store_true", help="skip the head sweep over cuts and input sizes")
    parser.add_argument("--worker", choices=("bare", "agent", "sweep"), help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=(*BARE_LAYOUTS, "loop"), default="spin", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cloud", help=argparse.SUPPRESS)
    parser.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames < 3:
        parser.error("--frames: at least 3 (the steady rate is timed between frames after the first)")
    if args.serve_sink:
        return serve_sink(args)
    if args.worker:
        return worker(args)

    from rich.console import Console

    from bench.common import git_revision, machine_info, progress
    from edge.config import CameraConfig
    from infocut.artifact import load_artifact

    console = Console(width=None if sys.stdout.isatty() else 130)
    art = load_artifact(args.artifact)
    m = art.manifest
    desc = f"{m['model']['name']} cut at {m['cut']['name']}, {art.input_size[0]}x{art.input_size[1]}, " \
           f"{art.bits} bits, {art.coder}"
    result = {"artifact": str(args.artifact), "artifact_id": art.id, "artifact_desc": desc, "source": args.source,
              "frames": args.frames, "threads": args.threads, "cores": args.cores, "repeat": args.repeat, "agent_spinning": args.spin,
              "bare_layouts_defined": BARE_LAYOUTS,
              "side_nice": CameraConfig.model_fields["side_nice"].default if args.side_nice is None else args.side_nice,
              "cpu_scheduling": args.cpu_scheduling,
              "git": git_revision(),
              "machine": machine_info(args.threads), "command": " ".join(sys.argv), "loadavg_start": os.getloadavg(),
              "overhead_definition": "bare fps / pipeline fps - 1 (the pipeline's extra time per frame), fps "
                                     f"being the steady rate after the first {STEADY_SKIP:.0%} of each run's frames, "
                                     "of the median runs, bare being the layout with the highest median fps; paired: the "
                                     "median over runs of the same ratio against that layout's run just before; cpu "
                                     "overhead: pipeline CPU s per frame / that layout's CPU s per frame - 1"}
    modes = ["loop"] + [f"bare:{k}" for k in BARE_LAYOUTS] + ["sink"] + ([] if args.no_cloud else ["cloud"])
    runs: dict[str, list[dict]] = defaultdict(list)
    with progress(console) as bar:
        task = bar.add_task("edge bench", total=args.repeat * len(modes) + (not args.no_sweep))
        for r in range(args.repeat):  # the modes interleaved, so a busy machine's drift hits them alike
            for mode in modes:
                bar.update(task, description=f"edge bench: {mode} ({r + 1}/{args.repeat})")
                runs[mode].append(run_mode(args, mode))
                bar.console.print(f"{mode} run {r + 1}: {runs[mode][-1]['fps']:.1f} fps")
                bar.advance(task)
        if not args.no_sweep:
            bar.update(task, description="edge bench: sweep")
            result["sweep"] = run_worker(args, "sweep")
            bar.advance(task)
    for mode, rs in runs.items():  # the run with the median fps stands for the mode; every run's fps is kept
        result[mode] = dict(sorted(rs, key=lambda x: x["fps"])[len(rs) // 2], fps_runs=[x["fps"] for x in rs])
    result["bare_layouts"] = {k: result.pop(f"bare:{k}") for k in BARE_LAYOUTS}
    best = max(BARE_LAYOUTS, key=lambda k: result["bare_layouts"][k]["fps"])  # the baseline: bare at its fastest
    result["bare"] = result["bare_layouts"][best]
    for mode, rs in runs.items():
        if mode in ("sink", "cloud"):
            result[mode]["overhead_pct"] = 100 * (result["bare"]["fps"] / result[mode]["fps"] - 1)
            # each run against the bare run just before it: a drift of the machine's speed hits both alike
            paired = paired_pct(runs[f"bare:{best}"], rs)
            result[mode]["overhead_pct_paired"] = float(np.median(paired))
            result[mode]["overhead_pct_paired_ci95"] = median_ci(paired)
            result[mode]["overhead_pct_runs"] = paired
            vs_loop = paired_pct(runs["loop"], rs)
            result[mode]["vs_loop_pct_paired"] = float(np.median(vs_loop))
            result[mode]["vs_loop_pct_paired_ci95"] = median_ci(vs_loop)
            result[mode]["cpu_overhead_pct"] = 100 * (result[mode]["cpu_s_per_frame"] / result["bare"]["cpu_s_per_frame"]
                                                      - 1)
            if result[mode]["frames"] != result[mode]["captured"] or result[mode]["dropped"]:
                console.print(f"[red]agent -> {mode}: {result[mode]['captured']} captured, "
                              f"{result[mode]['frames']} acked, {result[mode]['dropped']} dropped[/red]")
    alone = result["bare"]["alone_ms_p50"]
    side = {k: alone[k] for k in SIDE_STAGES}
    result["side_alone"] = {"ms_per_frame": side, "pct_of_bare_cpu": 100 * sum(side.values())
                            / (1e3 * result["bare"]["cpu_s_per_frame"])}
    result["loadavg_end"] = os.getloadavg()
    print_report(result, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
