"""Dependencies shared by the routers: the store, paging and time-window query parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from cloud.store import Store

MAX_LIMIT = 1000
MAX_INT64 = 2**63 - 1


def get_store(request: Request) -> Store:
    return request.app.state.store


StoreDep = Annotated[Store, Depends(get_store)]


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT64, description="items to skip")] = 0,
) -> Paging:
    return Paging(limit, offset)


PagingDep = Annotated[Paging, Depends(paging)]


@dataclass(frozen=True)
class Window:
    since: datetime | None
    until: datetime | None


def window(
    since: Annotated[
        datetime | None, Query(description="ISO 8601, inclusive; without an offset it is taken as UTC")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="ISO 8601, exclusive; without an offset it is taken as UTC")
    ] = None,
) -> Window:
    since, until = _as_utc("since", since), _as_utc("until", until)
    if since is not None and until is not None and since > until:
        raise HTTPException(422, detail="since must not be after until")
    return Window(since, until)


WindowDep = Annotated[Window, Depends(window)]

CameraId = Annotated[str, Query(min_length=1, max_length=128, description="camera id")]


def _as_utc(name: str, t: datetime | None) -> datetime | None:
    if t is None:
        return None
    try:
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except OverflowError:
        raise HTTPException(422, detail=f"{name} is out of range") from None
