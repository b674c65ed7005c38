"""The FastAPI application of the cloud node."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from cloud.api import alerts, cameras, health, scores
from cloud.store import Store


def create_app(store: Store, ready: Callable[[], bool]) -> FastAPI:
    """REST app over ``store``; ``ready`` tells /readyz whether the rest of the node (gRPC, tail) is up."""
    app = FastAPI(
        title="infocut cloud",
        version="0.1.0",
        summary="Anomaly scores, alerts and camera statistics of an infocut split-inference deployment.",
    )
    app.state.store = store
    app.state.ready = ready
    for module in (alerts, scores, cameras, health):
        app.include_router(module.router)
    return app
