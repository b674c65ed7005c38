"""GET /cameras: every camera that has sent a frame, with its traffic and open alert."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import StoreDep
from cloud.api.schemas import CameraOut

router = APIRouter(prefix="/cameras", tags=["cameras"])


@router.get("", response_model=list[CameraOut], summary="Cameras seen, by id")
def list_cameras(store: StoreDep) -> list[CameraOut]:
    return store.list_cameras()
