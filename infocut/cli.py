"""The `infocut` command: split (offline, torch), edge, cloud and demo.

Each subcommand imports only what it needs, so `infocut edge` runs on an install without torch
or the cloud's web stack.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Split inference for video anomaly detection.")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    artifact: Annotated[Path, typer.Option(help="artifact directory")],
    source: Annotated[str, typer.Option(help="video file, image folder, webcam index or rtsp:// URL")],
    cloud: Annotated[str, typer.Option(help="cloud gRPC address HOST:PORT")] = "localhost:50051",
    camera_id: Annotated[str, typer.Option(help="this camera's id")] = "cam-01",
    max_frames: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
    realtime: Annotated[bool, typer.Option(help="pace a file source at its frame rate")] = False,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0 = all cores)")] = 0,
    verbose: bool = False,
) -> None:
    """Run the head on a camera stream and send the coded cut tensor to the cloud."""
    from edge.agent import EdgeConfig, EdgeError, run

    _logging(verbose)
    try:
        stats = run(EdgeConfig(
            artifact=artifact, source=source, cloud=cloud, camera_id=camera_id, max_frames=max_frames,
            realtime=realtime, threads=threads,
        ))
    except EdgeError as e:
        typer.echo(f"edge: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(0 if stats.rejected == 0 else 1)


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
