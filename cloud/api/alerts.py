"""GET /alerts and /alerts/{alert_id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from cloud.api.deps import MAX_INT64, CameraId, PagingDep, StoreDep, WindowDep
from cloud.api.schemas import AlertOut, AlertPage

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=AlertPage, summary="Alerts overlapping a time window, newest first")
def list_alerts(
    store: StoreDep,
    page: PagingDep,
    window: WindowDep,
    camera_id: CameraId | None = None,
    min_score: Annotated[
        float | None, Query(allow_inf_nan=False, description="lowest peak score to include")
    ] = None,
) -> AlertPage:
    items, total = store.list_alerts(
        camera_id=camera_id,
        since=window.since,
        until=window.until,
        min_score=min_score,
        limit=page.limit,
        offset=page.offset,
    )
    return AlertPage(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{alert_id}",
    response_model=AlertOut,
    summary="One alert",
    responses={404: {"description": "no such alert"}},
)
def get_alert(store: StoreDep, alert_id: Annotated[int, Path(ge=1, le=MAX_INT64)]) -> AlertOut:
    alert = store.get_alert(alert_id)
    if alert is None:
        raise HTTPException(404, detail=f"alert {alert_id} not found")
    return alert
