"""The `infocut` command: split (offline, torch), edge, cloud and demo.

Each subcommand imports only what it needs, so `infocut edge` runs on an install without torch
or the cloud's web stack.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Split inference for video anomaly detection.")


def _logging(verbose: bool, kv: bool = False) -> None:
    """Log lines to stderr; `kv`: key=value lines (the edge's messages are key=value themselves)."""
    fmt = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s" if kv else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr,
                        datefmt="%Y-%m-%dT%H:%M:%S" if kv else None)


@app.command()
def split(
    model: Annotated[str, typer.Argument(help="a known model (resnet20, resnet56) or package.module:function")],
    weights: Annotated[Path | None, typer.Option(help="weights file for the factory")] = None,
    list_cuts: Annotated[bool, typer.Option("--list", help="print the candidate cuts and exit")] = False,
    cut: Annotated[str | None, typer.Option(help="where to cut (a name from --list)")] = None,
    bits: Annotated[int, typer.Option(min=2, max=8, help="quantizer bits")] = 8,
    coder: Annotated[str, typer.Option(help="entropy coder: zstd or raw")] = "zstd",
    per_tensor: Annotated[bool, typer.Option(help="one scale for the whole tensor instead of per channel")] = False,
    task: Annotated[str, typer.Option(help="anomaly (scorer in the tail) or classify (logits)")] = "anomaly",
    height: Annotated[int | None, typer.Option(help="input height (default: the model's)")] = None,
    width: Annotated[int | None, typer.Option(help="input width (default: the model's)")] = None,
    gap: Annotated[int, typer.Option(min=1, help="the scorer sees the feature change over this many frames")] = 1,
    topk: Annotated[int, typer.Option(min=1, help="a frame's score is the mean of its topk most anomalous locations")] = 20,
    bank_size: Annotated[int, typer.Option(min=16, help="normal patches kept in the scorer's memory bank")] = 1024,
    out: Annotated[Path | None, typer.Option(help="artifact directory to write")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable --list")] = False,
) -> None:
    """List the cuts of MODEL, or cut it and write an artifact (head.onnx, tail.onnx, manifest.json)."""
    from rich.console import Console
    from rich.table import Table

    from splitter.export import SplitConfig, Splitter

    size = (height, width) if height and width else None
    cfg = SplitConfig(
        model=model, weights=str(weights) if weights else None, bits=bits, coder=coder,
        per_channel=not per_tensor, task=task, input_size=size, gap=gap, topk=topk, bank_size=bank_size,
    )
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
    if not cut or not out:
        raise typer.BadParameter("give --cut and --out to export an artifact (or --list)")
    manifest = splitter.export(out, cut, bits)
    typer.echo(f"wrote artifact {manifest['artifact_id']} to {out}")


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
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0 = all cores)")] = 0,
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
                      "threads": threads, **({"policy": policy} if policy else {})}
            spool_cfg = {"dir": str(spool), "cap_bytes": spool_cap, "ttl_s": spool_ttl, "when_full": spool_when_full}
            cfg = load({"artifact": str(artifact), "cloud": cloud, "metrics_port": metrics_port, "spool": spool_cfg,
                        "cameras": [camera]}, "command line")
        if config is not None and metrics_port:
            cfg.metrics_port = metrics_port
        signal.signal(signal.SIGTERM, _interrupt)  # systemd stop: finish cleanly, the spool keeps the rest
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
    verbose: bool = False,
) -> None:
    """Serve the tail: gRPC ingest, scoring, alerts, REST API and metrics."""
    from cloud.config import AlertConfig, CloudConfig
    from cloud.server import run

    _logging(verbose)
    cfg = CloudConfig(
        artifact=artifact, grpc_host=host, grpc_port=grpc_port, http_host=host, http_port=http_port, db_url=db,
        alert=AlertConfig(open_after=open_after, close_after=close_after),
    )
    run(cfg)


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
