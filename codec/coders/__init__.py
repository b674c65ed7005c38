"""Registry of entropy coders, looked up by the name in a manifest or the id in a frame header.

Each coder module defines NAME, ID, encode(codes, bits) -> bytes and
decode(payload, shape, bits) -> uint8 array; decode raises CodecError on any bad payload.
A coder with NEEDS_MODEL = True also takes the artifact's entropy model and, for a delta frame,
the reference frame's codes: encode(codes, bits, model, ref) and decode(payload, shape, bits, model, ref).
"""

from __future__ import annotations

from types import ModuleType

from codec.coders import ans, raw, zstd
from codec.errors import CodecError

_CODERS: tuple[ModuleType, ...] = (raw, zstd, ans)
_BY_NAME = {c.NAME: c for c in _CODERS}
_BY_ID = {c.ID: c for c in _CODERS}
assert len(_BY_NAME) == len(_BY_ID) == len(_CODERS), "coder names and ids must be unique"


def names() -> list[str]:
    """Registered coder names, in id order."""
    return [_BY_ID[i].NAME for i in sorted(_BY_ID)]


def standalone() -> list[str]:
    """The coders that code a frame alone, without fitted tables (what an analysis can try on any cut)."""
    return [n for n in names() if not needs_model(n)]


def needs_model(name_or_id: str | int) -> bool:
    """Whether the coder codes against the artifact's entropy model (fitted tables) rather than alone."""
    return bool(getattr(get_coder(name_or_id), "NEEDS_MODEL", False))


def get_coder(name_or_id: str | int) -> ModuleType:
    coder = _BY_NAME.get(name_or_id) if isinstance(name_or_id, str) else _BY_ID.get(name_or_id)
    if coder is None or isinstance(name_or_id, bool):
        raise CodecError(f"unknown coder {name_or_id!r} (known: {', '.join(names())})")
    return coder
