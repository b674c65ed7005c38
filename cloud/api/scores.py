"""GET /scores: the per-frame score series of one camera."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import CameraId, PagingDep, StoreDep, WindowDep
from cloud.api.schemas import ScorePage

router = APIRouter(prefix="/scores", tags=["scores"])


@router.get("", response_model=ScorePage, summary="Scores of one camera by capture time, newest first")
def list_scores(store: StoreDep, camera_id: CameraId, page: PagingDep, window: WindowDep) -> ScorePage:
    items, total = store.list_scores(
        camera_id, since=window.since, until=window.until, limit=page.limit, offset=page.offset
    )
    return ScorePage(items=items, total=total, limit=page.limit, offset=page.offset)
