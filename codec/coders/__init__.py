"""Registry of entropy coders, looked up by the name in a manifest or the id in a frame header.

Each coder module defines NAME, ID, encode(codes, bits) -> bytes and
decode(payload, shape, bits) -> uint8 array; decode raises CodecError on any bad payload.
"""

from __future__ import annotations

from types import ModuleType

from codec.coders import raw, zstd
from codec.errors import CodecError

_CODERS: tuple[ModuleType, ...] = (raw, zstd)
_BY_NAME = {c.NAME: c for c in _CODERS}
_BY_ID = {c.ID: c for c in _CODERS}
assert len(_BY_NAME) == len(_BY_ID) == len(_CODERS), "coder names and ids must be unique"


def names() -> list[str]:
    """Registered coder names, in id order."""
    return [_BY_ID[i].NAME for i in sorted(_BY_ID)]


def get_coder(name_or_id: str | int) -> ModuleType:
    coder = _BY_NAME.get(name_or_id) if isinstance(name_or_id, str) else _BY_ID.get(name_or_id)
    if coder is None or isinstance(name_or_id, bool):
        raise CodecError(f"unknown coder {name_or_id!r} (known: {', '.join(names())})")
    return coder
