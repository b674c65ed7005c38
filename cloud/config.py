"""Typed configuration of the cloud node."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

TEST_DELAY_ENV = "INFOCUT_CLOUD_TEST_DELAY_S"


class AlertConfig(BaseModel):
    """Alert hysteresis, so that one noisy frame neither opens nor closes an alert on its own.

    An alert opens once ``open_after`` consecutive frames are anomalous (it starts at the first of them),
    stays open while frames are anomalous and closes after ``close_after`` consecutive normal frames.
    """

    open_after: int = Field(1, ge=1, le=100, description="consecutive anomalous frames that open an alert")
    close_after: int = Field(5, ge=1, description="consecutive normal frames that close an open alert")


class CloudConfig(BaseModel):
    artifact: Path
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(50051, ge=1, le=65535)
    http_host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=1, le=65535)
    db_url: str = "sqlite:///infocut.db"
    alert: AlertConfig = Field(default_factory=AlertConfig)
    # gRPC TLS: cert + key serve TLS; client_ca also requires a client certificate signed by it (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Per-camera bearer tokens (cloud/auth.py): a YAML/JSON file `camera id: sha256:<hex>`; None: open.
    tokens: Path | None = None
    providers: str = Field("auto", description="onnxruntime providers of the tail: auto or a list of tensorrt,cuda,cpu")
    # Test-only: hold every frame this long before scoring it, to play a slow cloud in the fault tests.
    test_delay_s: float = Field(default_factory=lambda: float(os.environ.get(TEST_DELAY_ENV) or 0), ge=0, le=60)
