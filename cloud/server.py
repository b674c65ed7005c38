"""The cloud node: the gRPC ingest server and the REST API in one asyncio process."""

from __future__ import annotations

import asyncio
import logging

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud import metrics
from cloud.api import create_app
from cloud.auth import Auth, load_table
from cloud.config import CloudConfig
from cloud.service import IngestService
from cloud.store import Store
from cloud.tail import Tail
from edge.providers import short
from infocut import tls
from infocut.artifact import load_artifact
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc

log = logging.getLogger("infocut.cloud")

MAX_MESSAGE = 64 * 1024 * 1024
SERVICE = pb.DESCRIPTOR.services_by_name["Ingest"].full_name
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


async def start_grpc(cfg: CloudConfig, service: IngestService) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_IngestServicer_to_server(service, server)
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.grpc_host}:{cfg.grpc_port}"
    if cfg.tls_cert is not None or cfg.tls_key is not None:
        creds = tls.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        port = server.add_secure_port(address, creds)
        log.info("gRPC TLS on :%d%s", port, ", client certificates required (mTLS)" if cfg.tls_client_ca else "")
    elif cfg.tls_client_ca is not None:
        raise tls.TLSError("tls_client_ca needs tls_cert and tls_key (the server's own certificate)")
    else:
        port = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE):
        await status.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def serve(cfg: CloudConfig) -> None:
    artifact = load_artifact(cfg.artifact)
    auth = Auth(load_table(cfg.tokens) if cfg.tokens is not None else None)
    tail = Tail(artifact, providers=cfg.providers)
    metrics.PROVIDERS.labels(providers=short(tail.providers)).set(1)
    log.info("tail runs on %s", short(tail.providers))
    store = Store(cfg.db_url, cfg.alert)
    service = IngestService(artifact, store, tail=tail, delay_s=cfg.test_delay_s, auth=auth)
    if cfg.test_delay_s:
        log.warning("test-only delay: every frame is held %.3f s before it is scored", cfg.test_delay_s)
    grpc_server, port = await start_grpc(cfg, service)
    log.info(
        "cloud serving artifact %s (%s cut at %s) on gRPC :%d, REST :%d, db %s",
        artifact.id, artifact.manifest["model"]["name"], artifact.manifest["cut"]["name"], port,
        cfg.http_port, store.engine.url.render_as_string(hide_password=True),
    )
    app = create_app(store, ready=lambda: True)
    http = uvicorn.Server(uvicorn.Config(app, host=cfg.http_host, port=cfg.http_port, log_level="warning"))
    try:
        await http.serve()  # returns on SIGINT / SIGTERM
    finally:
        await grpc_server.stop(grace=5)
        store.close()
        log.info("cloud stopped")


def run(cfg: CloudConfig) -> None:
    asyncio.run(serve(cfg))
