"""The `infocut` command: split (offline, torch), edge, cloud and demo.

Each subcommand imports only what it needs, so `infocut edge` runs on an install without torch
or the cloud's web stack.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Split inference for video anomaly detection.")


def _logging(verbose: bool, kv: bool = False) -> None:
    """Log lines to stderr; `kv`: key=value lines (the edge's messages are key=value themselves)."""
    fmt = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s" if kv else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr,
                        datefmt="%Y-%m-%dT%H:%M:%S" if kv else None)


DEFAULT_CACHE = Path(".cache") / "analyze"
ANALYZE_BITS = "8,6,4,3,2"


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what}: give at least one value")
    return values


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _selection_args(bandwidth: str, rtt: str, device: str, max_drop: float):
    """Parse the link and device options into (bits/s, ms, device profile, drop as a fraction)."""
    from splitter.cost import load_device, parse_bandwidth, parse_duration

    try:
        return parse_bandwidth(bandwidth), parse_duration(rtt), load_device(device), max_drop / 100.0
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _analysis(splitter, bits: str, cuts: str | None, eval_stride: int, cache: Path | None) -> dict:
    from splitter.analyze import analyze

    try:
        return analyze(splitter, bits=_ints(bits, "bits"), cuts=_names(cuts), eval_stride=eval_stride,
                       cache_dir=cache)
    except ValueError as e:  # an unknown cut name, a bad bit depth
        raise typer.BadParameter(str(e)) from None


@app.command()
def split(
    model: Annotated[str, typer.Argument(help="a known model (resnet20, resnet56) or package.module:function")],
    weights: Annotated[Path | None, typer.Option(help="weights file for the factory")] = None,
    list_cuts: Annotated[bool, typer.Option("--list", help="print the candidate cuts and exit")] = False,
    cut: Annotated[str | None, typer.Option(help="where to cut (a name from --list)")] = None,
    bits: Annotated[int, typer.Option(min=2, max=8, help="quantizer bits")] = 8,
    coder: Annotated[str, typer.Option(help="entropy coder: zstd, raw or ans (tables fitted on normal video, "
                                           "key and delta frames)")] = "zstd",
    key_interval: Annotated[int, typer.Option(min=1, help="ans: most frames between key frames (1: no delta frames)")] = 50,
    per_tensor: Annotated[bool, typer.Option(help="one scale for the whole tensor instead of per channel")] = False,
    task: Annotated[str, typer.Option(help="anomaly (scorer in the tail) or classify (logits)")] = "anomaly",
    height: Annotated[int | None, typer.Option(help="input height (default: the model's)")] = None,
    width: Annotated[int | None, typer.Option(help="input width (default: the model's)")] = None,
    gap: Annotated[int, typer.Option(min=1, help="the scorer sees the feature change over this many frames")] = 1,
    topk: Annotated[int, typer.Option(min=1, help="a frame's score is the mean of its topk most anomalous locations")] = 20,
    bank_size: Annotated[int, typer.Option(min=16, help="normal patches kept in the scorer's memory bank")] = 1024,
    out: Annotated[Path | None, typer.Option(help="artifact directory to write")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable --list")] = False,
    auto: Annotated[bool, typer.Option("--auto", help="choose cut, bits and coder from the analysis (cached)")] = False,
    bandwidth: Annotated[str, typer.Option(help="--auto: uplink rate, e.g. 5Mbit, 500kbit, 2MB/s")] = "5Mbit",
    rtt: Annotated[str, typer.Option(help="--auto: round-trip time, e.g. 20ms")] = "20ms",
    device: Annotated[str, typer.Option(help="--auto: edge device profile (splitter/devices.json) or JSON file")] = (
        "rpi4"
    ),
    max_drop: Annotated[float, typer.Option(min=0, help="--auto: largest AUROC drop allowed, in points (1 = 0.01)")] = 1.0,
    fps: Annotated[float, typer.Option(min=0, help="--auto: frames per second the pipeline must sustain (0: no floor)")] = 0.0,
    objective: Annotated[str, typer.Option(help="--auto: bytes (fewest bytes per frame) or latency")] = "bytes",
    candidate_bits: Annotated[str, typer.Option(help="--auto: bit depths to consider")] = ANALYZE_BITS,
    cuts: Annotated[str | None, typer.Option(help="--auto: only these cuts (comma-separated; default all)")] = None,
    eval_stride: Annotated[int, typer.Option(min=1, help="--auto: score every n-th Ped2 test frame")] = 4,
    cache: Annotated[Path, typer.Option(help="--auto: analysis cache directory")] = DEFAULT_CACHE,
) -> None:
    """List the cuts of MODEL, or cut it and write an artifact (head.onnx, tail.onnx, manifest.json).

    With --auto the cut, bit depth and coder are chosen for the link and device: the analysis
    (`infocut analyze`, cached) measures every setting, the selection takes the feasible one with the
    fewest bytes per frame (or the lowest latency) and says why."""
    from rich.console import Console
    from rich.table import Table

    from splitter.export import SplitConfig, Splitter

    size = (height, width) if height and width else None
    cfg = SplitConfig(
        model=model, weights=str(weights) if weights else None, bits=bits, coder=coder, key_interval=key_interval,
        per_channel=not per_tensor, task=task, input_size=size, gap=gap, topk=topk, bank_size=bank_size,
    )
    if auto:
        if objective not in ("bytes", "latency"):
            raise typer.BadParameter(f"--objective must be bytes or latency, got {objective!r}")
        if not out:
            raise typer.BadParameter("--auto needs --out, the artifact directory to write")
        link = _selection_args(bandwidth, rtt, device, max_drop)
    splitter = Splitter(cfg)
    if list_cuts:
        rows = [
            {"name": c.name, "stage": c.stage, "tensors": [{"node": t.name, "shape": list(t.shape)} for t in c.tensors],
             "elements": c.elements, "float_bytes": c.raw_bytes, "bytes_8bit": c.elements}
            for c in splitter.cuts
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(
            title=f"candidate cuts of {model} at {splitter.size[0]}x{splitter.size[1]}, bytes per frame",
            caption="stage: between two top-level stages; a + b: two tensors, across a skip connection",
        )
        for col in ("cut", "stage", "tensors", "float32", "8-bit"):
            table.add_column(col, justify="left" if col in ("cut", "stage") else "right")
        for r in rows:
            shapes = " + ".join("x".join(map(str, t["shape"])) for t in r["tensors"])
            table.add_row(r["name"], "stage" if r["stage"] else "", shapes, f"{r['float_bytes']:,}", f"{r['bytes_8bit']:,}")
        Console().print(table)
        return
    if auto:
        _auto(splitter, out, link, fps, objective, candidate_bits, cuts, eval_stride, cache)
        return
    if not cut or not out:
        raise typer.BadParameter("give --cut and --out to export an artifact (or --list, or --auto)")
    manifest = splitter.export(out, cut, bits)
    typer.echo(f"wrote artifact {manifest['artifact_id']} to {out}")


def _auto(splitter, out: Path, link, fps: float, objective: str, bits: str, cuts: str | None, eval_stride: int,
          cache: Path) -> None:
    """Analyse (cached), select, say why, export the choice with the analysed quantizer parameters."""
    import codec
    from splitter.cuts import find_cut
    from splitter.selection import select

    bandwidth, rtt, device, max_drop = link
    analysis = _analysis(splitter, bits, cuts, eval_stride, cache)
    try:
        sel = select(analysis, bandwidth, rtt, device, max_drop=max_drop, fps=fps, objective=objective)
    except ValueError as e:
        typer.echo(f"split --auto: {e}", err=True)
        raise typer.Exit(2) from None
    c = sel["choice"]
    if sel["fallback"]:
        typer.secho(sel["warning"], fg=typer.colors.RED, bold=True, err=True)
    else:
        typer.echo(f"chosen: {c['cut']} at {c['bits']} bits, coder {c['coder']}")
        typer.echo(sel["reason"])
    row = next(r for r in analysis["rows"] if r["cut"] == c["cut"] and r["bits"] == c["bits"])
    qs = [codec.QuantParams.from_json(q) for q in row["qparams"]]  # the analysed quantizer, not a refit
    cut = find_cut(splitter.cuts, c["cut"])
    manifest = splitter.export(out, cut.name, c["bits"], coder=c["coder"], qparams=qs)
    (Path(out) / "selection.json").write_text(json.dumps(
        {k: v for k, v in sel.items() if k not in ("candidates",)}, indent=1, default=str) + "\n")
    typer.echo(f"wrote artifact {manifest['artifact_id']} to {out} (selection.json beside it says why)")


@app.command()
def analyze(
    model: Annotated[str, typer.Argument(help="a known model (resnet20, resnet56, mobilenet_v2) or package.module:function")],
    data: Annotated[Path | None, typer.Option(help="the shared data/models folder (default: $INFOCUT_SHARED or ../shared)")] = None,
    out: Annotated[Path | None, typer.Option(help="report directory (default: reports/MODEL)")] = None,
    bits: Annotated[str, typer.Option(help="bit depths, comma-separated")] = ANALYZE_BITS,
    eval_stride: Annotated[int, typer.Option(min=1, help="score every n-th Ped2 test frame")] = 4,
    cuts: Annotated[str | None, typer.Option(help="only these cuts (comma-separated; default: every candidate)")] = None,
    weights: Annotated[Path | None, typer.Option(help="weights file for the factory")] = None,
    task: Annotated[str, typer.Option(help="anomaly (Ped2 AUROC) or classify (agreement with the unsplit model)")] = "anomaly",
    height: Annotated[int | None, typer.Option(help="input height (default: the model's)")] = None,
    width: Annotated[int | None, typer.Option(help="input width (default: the model's)")] = None,
    gap: Annotated[int, typer.Option(min=1, help="the scorer sees the feature change over this many frames")] = 1,
    topk: Annotated[int, typer.Option(min=1, help="a frame's score is the mean of its topk most anomalous locations")] = 20,
    bank_size: Annotated[int, typer.Option(min=16, help="normal patches kept in the scorer's memory bank")] = 1024,
    device: Annotated[str, typer.Option(help="edge device for the latency figures and selections")] = "rpi4",
    rtt: Annotated[str, typer.Option(help="round-trip time for the selections")] = "20ms",
    max_drop: Annotated[float, typer.Option(min=0, help="largest AUROC drop allowed, in points (1 = 0.01)")] = 1.0,
    fps: Annotated[float, typer.Option(min=0, help="frames per second the pipeline must sustain (0: no floor)")] = 0.0,
    objective: Annotated[str, typer.Option(help="bytes or latency")] = "bytes",
    cache: Annotated[Path, typer.Option(help="analysis cache directory")] = DEFAULT_CACHE,
) -> None:
    """Measure every cut and bit depth of MODEL on Ped2 and write report.md, analysis.json and plots:
    rate (entropy bound and coded bytes), information kept (I(T;Y) bound), fidelity (AUROC drop), head
    cost and latency, and the selection at 1, 5 and 50 Mbit/s."""
    import os

    if data is not None:
        os.environ["INFOCUT_SHARED"] = str(data.resolve())
    from splitter import report
    from splitter.export import SplitConfig, Splitter

    _, rtt_ms, dev, drop = _selection_args("1Mbit", rtt, device, max_drop)
    size = (height, width) if height and width else None
    cfg = SplitConfig(model=model, weights=str(weights) if weights else None, task=task, input_size=size, gap=gap,
                      topk=topk, bank_size=bank_size)
    splitter = Splitter(cfg)
    analysis = _analysis(splitter, bits, cuts, eval_stride, cache)
    out = out or Path("reports") / model.replace(":", "_").replace(".", "_")
    doc = report.write(analysis, out, device=dev, rtt_ms=rtt_ms,
                       max_drop=drop, fps=fps, objective=objective)
    for s in doc["selections"]:
        c = s["choice"]
        flag = "" if s["feasible"] else "  (NO FEASIBLE SETTING: fallback)"
        typer.echo(f"{s['bandwidth_bps'] / 1e6:g} Mbit/s: {c['cut']} at {c['bits']} bits, {c['coder']}: "
                   f"{c['bytes']:,.0f} B/frame, drop {c['drop']:+.3f}, {c['latency_ms']:.0f} ms{flag}")
    found = analysis["cuts_found"]
    typer.echo(f"{found['total']} candidate cuts ({found['stage']} stage, {found['inner']} inner, {found['multi']} "
               f"multi-tensor); {analysis['run']['wall_s']:.0f} s; wrote {out}/report.md, analysis.json, "
               f"{', '.join(report.PLOTS)}")


@app.command("report")
def report_cmd(
    analysis: Annotated[Path, typer.Argument(help="an analysis.json written by `infocut analyze`")],
    out: Annotated[Path | None, typer.Option(help="report directory (default: the JSON's folder)")] = None,
    device: Annotated[str, typer.Option(help="edge device for the latency figures and selections")] = "rpi4",
    rtt: Annotated[str, typer.Option(help="round-trip time for the selections")] = "20ms",
    max_drop: Annotated[float, typer.Option(min=0, help="largest AUROC drop allowed, in points (1 = 0.01)")] = 1.0,
    fps: Annotated[float, typer.Option(min=0, help="frames per second the pipeline must sustain (0: no floor)")] = 0.0,
    objective: Annotated[str, typer.Option(help="bytes or latency")] = "bytes",
) -> None:
    """Rewrite report.md, analysis.json and the plots from a saved analysis (other link, device or limits;
    nothing is measured again)."""
    from splitter import report

    try:
        doc = json.loads(analysis.read_text())
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"{analysis}: {e}") from None
    if not isinstance(doc, dict) or "rows" not in doc or "cuts" not in doc:
        raise typer.BadParameter(f"{analysis}: not an infocut analysis (no rows or cuts)")
    _, rtt_ms, dev, drop = _selection_args("1Mbit", rtt, device, max_drop)
    for k in ("selections", "dpi", "selection_settings"):  # derived: written again from the measurements
        doc.pop(k, None)
    out = out or analysis.parent
    report.write(doc, out, device=dev, rtt_ms=rtt_ms, max_drop=drop, fps=fps, objective=objective)
    typer.echo(f"wrote {out}/report.md, analysis.json, {', '.join(report.PLOTS)}")


@app.command()
def bottleneck(
    model: Annotated[str, typer.Argument(help="a known model (mobilenet_v2) or package.module:function")],
    cut: Annotated[str, typer.Option(help="where to cut (a stage of `split --list`)")] = "block3",
    channels: Annotated[int, typer.Option(min=1, help="K, the code channels")] = 4,
    stride: Annotated[int, typer.Option(min=1, max=2, help="the encoder's spatial stride (1 or 2)")] = 2,
    bits: Annotated[int, typer.Option(min=1, max=8, help="B: codes in 0..2^B-1")] = 3,
    lam: Annotated[float, typer.Option("--lambda", min=0, help="rate weight (normalized distortion per kB/frame)")] = 0.01,
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 200,
    batch: Annotated[int, typer.Option(min=1, help="pairs of frames `gap` apart per step")] = 6,
    hidden: Annotated[int, typer.Option(min=1, help="the encoder's hidden channels (edge FLOPs)")] = 16,
    seed: Annotated[int, typer.Option(help="training seed (training is deterministic for a seed)")] = 0,
    gap: Annotated[int, typer.Option(min=1, help="the scorer sees the feature change over this many frames")] = 2,
    topk: Annotated[int, typer.Option(min=1, help="a frame's score is the mean of its topk most anomalous locations")] = 50,
    bank_size: Annotated[int, typer.Option(min=16, help="normal patches kept in the scorer's memory bank")] = 1024,
    weights: Annotated[Path | None, typer.Option(help="trained bottleneck weights (.safetensors): export without training")] = None,
    cache: Annotated[Path, typer.Option(help="cache of the teacher's activations")] = Path(".cache") / "bottleneck",
    out: Annotated[Path, typer.Option(help="artifact directory to write")] = Path("artifacts") / "bottleneck",
) -> None:
    """Train a learned bottleneck at CUT by head-network distillation on the normal Ped2 training videos
    and export it as an artifact: head.onnx ends in the encoder and quantizer (uint8 codes, K channels),
    tail.onnx starts with the dequantizer and decoder; the scorer is fitted through the bottleneck."""
    import torch
    from rich.console import Console

    from splitter import bottleneck as bn
    from splitter.export import SplitConfig, Splitter
    from splitter.features import progress_bar

    console = Console(stderr=True)
    cfg = SplitConfig(model=model, gap=gap, topk=topk, bank_size=bank_size, cut=cut, bits=bits)
    if weights is None:
        sp = Splitter(cfg, quiet=True)
        _, _, tail = bn.cut_and_tail(sp, cut)
        train_data = bn.FeatureCache(sp, cut, cache).get("fit", sp.training_videos(False))
        bcfg = bn.BottleneckConfig(cut=cut, channels=channels, stride=stride, bits=bits, lam=lam, steps=steps,
                                   batch=batch, hidden=hidden, seed=seed, gap=gap)
        torch.manual_seed(seed)
        with progress_bar(console=console, transient=False) as bar:
            net, info = bn.train(bcfg, tail, train_data, progress=bar)
        meta = {**info, "train_data": "Ped2 training videos less held-out " + ",".join(cfg.heldout) + ", all frames"}
        weights = out / "bottleneck.safetensors"
        sha = bn.save(net, weights, meta)
        console.print(f"trained in {info['seconds']:.0f} s: {info['final']}; weights {weights} sha256 {sha[:16]}")
        del sp, train_data
    cin = None
    for c in Splitter(cfg, quiet=True).stage_cuts:
        if c.name == cut:
            cin = c.shape[0]
    if cin is None:
        raise typer.BadParameter(f"no stage cut named {cut!r}")
    net, meta = bn.load(weights, cin)
    sp = bn.bottleneck_splitter(cfg, net, weights, meta)
    # the scorer is fitted through the bottleneck on the fit videos' cut activations (cached, onnxruntime)
    sp.fit_cache = bn.FeatureCache(sp, cut, cache).get("fit", sp.training_videos(False))
    manifest = sp.export(out, cut, net.cfg.bits)
    typer.echo(f"wrote artifact {manifest['artifact_id']} to {out} (codes {manifest['cut']['tensors'][0]['shape']})")


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="a known model (mobilenet_v2) or package.module:function")],
    cut: Annotated[str, typer.Option(help="where to cut")] = "block3",
    keep_channels: Annotated[int, typer.Option(min=1, help="N, the channels sent (highest code entropy)")] = 8,
    bits: Annotated[int, typer.Option(min=1, max=8, help="quantizer bits")] = 3,
    gap: Annotated[int, typer.Option(min=1, help="the scorer sees the feature change over this many frames")] = 2,
    topk: Annotated[int, typer.Option(min=1, help="a frame's score is the mean of its topk most anomalous locations")] = 50,
    bank_size: Annotated[int, typer.Option(min=16, help="normal patches kept in the scorer's memory bank")] = 1024,
    out: Annotated[Path, typer.Option(help="artifact directory to write")] = Path("artifacts") / "prune",
) -> None:
    """Entropy-guided channel pruning at CUT (training-free): the head sends the N channels of highest
    code entropy at BITS, the tail fills the others with their mean; the scorer is fitted through it."""
    from splitter import bottleneck as bn
    from splitter.export import SplitConfig

    cfg = SplitConfig(model=model, gap=gap, topk=topk, bank_size=bank_size, cut=cut, bits=bits)
    manifest = bn.prune_splitter(cfg, keep_channels).export(out, cut, bits)
    typer.echo(f"wrote artifact {manifest['artifact_id']} to {out} (codes {manifest['cut']['tensors'][0]['shape']})")


@app.command()
def edge(
    artifact: Annotated[Path | None, typer.Option(help="artifact directory")] = None,
    source: Annotated[str | None, typer.Option(help="video file, image folder, webcam index or rtsp:// URL")] = None,
    cloud: Annotated[str, typer.Option(help="cloud gRPC address HOST:PORT")] = "localhost:50051",
    camera_id: Annotated[str, typer.Option(help="this camera's id")] = "cam-01",
    config: Annotated[Path | None, typer.Option(help="YAML file with one or more cameras (instead of the "
                                                     "single-camera options above)")] = None,
    policy: Annotated[str | None, typer.Option(help="realtime (drop the oldest frames when behind) or lossless "
                                                     "(never drop); default: realtime for live sources, lossless "
                                                     "for files")] = None,
    spool: Annotated[Path, typer.Option(help="durable spool folder (one subfolder per camera)")] = Path("infocut-spool"),
    spool_cap: Annotated[int, typer.Option(help="spool size cap in bytes")] = 1 << 30,
    spool_ttl: Annotated[float, typer.Option(help="drop spooled frames older than this many seconds (0: never)")] = 0.0,
    spool_when_full: Annotated[str, typer.Option(help="drop-oldest or reject-new")] = "drop-oldest",
    metrics_port: Annotated[int, typer.Option(help="serve Prometheus /metrics on this port (0: off)")] = 0,
    max_frames: Annotated[int | None, typer.Option(help="stop after this many frames of a file")] = None,
    pace: Annotated[bool, typer.Option(help="pace a file source at its own frame rate, as a camera would")] = False,
    fps: Annotated[float, typer.Option(help="pace a file source at this rate (0: as fast as it goes)")] = 0.0,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads of each head session (0: the cores, "
                                              "shared among the cameras and head workers)")] = 0,
    head_workers: Annotated[int, typer.Option(help="head sessions running frames side by side (0: 2 on a CPU-only "
                                                   "head with 2+ cores per camera, else 1)")] = 0,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg threads decoding a video file or stream (0: FFmpeg's "
                                                     "choice, about one per core)")] = 1,
    cpu_scheduling: Annotated[Literal["batch", "normal"] | None, typer.Option(
        help="Linux scheduling policy of the edge's threads: batch (the default: a waking stage does not preempt "
             "the head, less CPU a frame) or normal (the lowest latency)")] = None,
    providers: Annotated[str, typer.Option(help="onnxruntime providers of the head: auto (TensorRT > CUDA > CPU, "
                                                "what this onnxruntime has) or a comma list of tensorrt, cuda, "
                                                "cpu")] = "auto",
    spool_mode: Annotated[str, typer.Option(help="overflow (spool only when the link is down or behind) or always "
                                                 "(every frame to disk first)")] = "overflow",
    stall_timeout: Annotated[float, typer.Option(help="reopen a live source silent this many seconds "
                                                      "(0: only when its stream ends)")] = 10.0,
    tls_ca: Annotated[Path | None, typer.Option(help="connect with TLS, trusting this CA for the cloud's "
                                                     "certificate (PEM)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="client certificate for mutual TLS (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="private key of --tls-cert (PEM)")] = None,
    token_file: Annotated[Path | None, typer.Option(help="file holding this camera's bearer token")] = None,
    verbose: bool = False,
) -> None:
    """Run the head on camera streams and send the coded cut tensors to the cloud.

    One camera from the options, or several from --config; INFOCUT_EDGE__* environment variables
    override either (see edge/config.py)."""
    from edge.agent import EdgeError, run
    from edge.config import ConfigError, load, load_file

    _logging(verbose, kv=True)
    try:
        if config is not None:
            if artifact or source:
                raise ConfigError("give either --config or --artifact/--source, not both")
            cfg = load_file(config)
        else:
            if not artifact or not source:
                raise ConfigError("give --artifact and --source (or --config FILE)")
            camera = {"id": camera_id, "source": source, "max_frames": max_frames, "pace": pace, "fps": fps,
                      "threads": threads, "head_workers": head_workers, "decode_threads": decode_threads,
                      "stall_timeout_s": stall_timeout,
                      **({"policy": policy} if policy else {})}
            spool_cfg = {"dir": str(spool), "cap_bytes": spool_cap, "ttl_s": spool_ttl, "when_full": spool_when_full,
                         "mode": spool_mode}
            link = {"providers": providers}
            if tls_ca or tls_cert or tls_key:
                link["tls"] = {"ca": tls_ca and str(tls_ca), "cert": tls_cert and str(tls_cert),
                               "key": tls_key and str(tls_key)}
            if token_file:
                link["token_file"] = str(token_file)
            cfg = load({"artifact": str(artifact), "cloud": cloud, "metrics_port": metrics_port, "spool": spool_cfg,
                        "cameras": [camera], **link}, "command line")
        if config is not None and metrics_port:
            cfg.metrics_port = metrics_port
        if cpu_scheduling is not None:  # click checked the value; with --config too, the flag wins
            cfg.cpu_scheduling = cpu_scheduling
        signal.signal(signal.SIGTERM, _interrupt)  # systemd stop: finish cleanly, the spool keeps the rest
        # Ctrl-C or `kill -INT` stops cleanly too, even when started in the background by a shell, which makes
        # SIGINT ignored (Python then installs no handler of its own)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack to stderr, for a stuck edge
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        stats = run(cfg)
    except (ConfigError, EdgeError) as e:
        typer.echo(f"edge: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(0 if all(s.rejected == 0 for s in stats) else 1)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@app.command()
def cloud(
    artifact: Annotated[Path, typer.Option(help="artifact directory")],
    grpc_port: Annotated[int, typer.Option(help="gRPC port (edge streams)")] = 50051,
    http_port: Annotated[int, typer.Option(help="REST port")] = 8000,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://...")] = (
        "sqlite:///infocut.db"
    ),
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
    open_after: Annotated[int, typer.Option(help="anomalous frames in a row that open an alert")] = 3,
    close_after: Annotated[int, typer.Option(help="normal frames in a row that close an alert")] = 5,
    tls_cert: Annotated[Path | None, typer.Option(help="serve gRPC over TLS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the private key of --tls-cert (PEM)")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="require client certificates signed by this CA "
                                                           "(mutual TLS)")] = None,
    tokens: Annotated[Path | None, typer.Option(help="per-camera bearer tokens: YAML `camera id: sha256:<hex>` "
                                                    "(default: any client may send for any camera)")] = None,
    providers: Annotated[str, typer.Option(help="onnxruntime providers of the tail: auto (TensorRT > CUDA > CPU) "
                                                "or a comma list of tensorrt, cuda, cpu")] = "auto",
    verbose: bool = False,
) -> None:
    """Serve the tail: gRPC ingest, scoring, alerts, REST API and metrics."""
    from cloud.auth import TokenTableError
    from cloud.config import AlertConfig, CloudConfig
    from cloud.server import run
    from edge.providers import ProviderError
    from infocut.tls import TLSError

    _logging(verbose)
    cfg = CloudConfig(
        artifact=artifact, grpc_host=host, grpc_port=grpc_port, http_host=host, http_port=http_port, db_url=db,
        alert=AlertConfig(open_after=open_after, close_after=close_after), tls_cert=tls_cert, tls_key=tls_key,
        tls_client_ca=tls_client_ca, tokens=tokens, providers=providers,
    )
    try:
        run(cfg)
    except (TLSError, TokenTableError, ProviderError) as e:
        typer.echo(f"cloud: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    http_port: Annotated[int, typer.Option(help="REST port")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 50051,
    db: Annotated[str | None, typer.Option(help="database URL (default: a fresh SQLite file)")] = None,
    exit_when_done: Annotated[bool, typer.Option(help="stop the cloud once the clip is scored")] = False,
    fast: Annotated[bool, typer.Option(help="send the clip as fast as possible instead of at 10 fps")] = False,
) -> None:
    """Cloud and edge as two processes on loopback, streaming the bundled Ped2 clip."""
    from infocut.demo import run

    raise typer.Exit(run(http_port=http_port, grpc_port=grpc_port, db=db, keep=not exit_when_done, realtime=not fast))


if __name__ == "__main__":
    app()
