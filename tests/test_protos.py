"""The committed gRPC stubs are exactly what the pinned grpcio-tools generates from infocut.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infocut.settings import REPO

GENERATED = ("infocut_pb2.py", "infocut_pb2.pyi", "infocut_pb2_grpc.py")


def test_stubs_are_current(tmp_path: Path):
    pytest.importorskip("grpc_tools")
    (tmp_path / "protos").mkdir()
    shutil.copy(REPO / "protos" / "infocut.proto", tmp_path / "protos")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.", "--grpc_python_out=.",
         "protos/infocut.proto"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (REPO / "protos" / name).read_text()
        assert fresh == committed, f"protos/{name} is stale: run `make protos` and commit"


def test_service_shape():
    from protos import infocut_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Ingest"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Handshake", "Stream", "Submit"}
    stream = methods["Stream"]
    assert stream.client_streaming and stream.server_streaming
    assert not methods["Submit"].client_streaming and not methods["Submit"].server_streaming
