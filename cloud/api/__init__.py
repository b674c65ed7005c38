"""REST API of the cloud node: alerts, scores, cameras, health and metrics (one router per resource)."""

from cloud.api.app import create_app

__all__ = ["create_app"]
