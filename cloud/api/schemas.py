"""Response models of the REST API, so that /openapi.json and /docs describe every answer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cloud.store import AlertOut, CameraOut, ScoreOut

__all__ = ["AlertOut", "AlertPage", "CameraOut", "ScoreOut", "ScorePage", "Status"]


class _Page(BaseModel):
    total: int = Field(description="items matching the filters, over all pages")
    limit: int
    offset: int


class AlertPage(_Page):
    items: list[AlertOut]


class ScorePage(_Page):
    items: list[ScoreOut]


class Status(BaseModel):
    status: str = Field(description='"ok" (alive), "ready" or "not ready"')
    checks: dict[str, bool] = Field(default_factory=dict, description="readiness of each dependency")
