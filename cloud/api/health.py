"""Liveness, readiness and Prometheus metrics, for orchestrators and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

import cloud.metrics  # noqa: F401  (registers the infocut_* metrics before the first scrape)
from cloud.api.deps import StoreDep
from cloud.api.schemas import Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers")
def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    summary="Readiness: the node is ready and the database answers",
    responses={503: {"model": Status, "description": "not ready"}},
)
def readyz(request: Request, store: StoreDep) -> Response | Status:
    checks = {"node": bool(request.app.state.ready()), "database": store.ping()}
    if all(checks.values()):
        return Status(status="ready", checks=checks)
    return JSONResponse(Status(status="not ready", checks=checks).model_dump(), status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus text exposition",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "metrics"}},
)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
