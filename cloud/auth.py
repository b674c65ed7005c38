"""Per-camera bearer tokens: which camera a gRPC call may speak for.

The token table maps a camera id to the sha256 of its token (`sha256:<64 hex>`; a plain token is
accepted and hashed at load, for tests and quick setups). Only digests are kept in memory and no
token is ever logged. A call's `authorization: Bearer <token>` metadata names exactly one camera:
a missing or unknown token is UNAUTHENTICATED, a frame for another camera PERMISSION_DENIED.
Without a table the cloud stays open (any client, any camera) and says so once at start.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import yaml

log = logging.getLogger("infocut.cloud.auth")

HEADER = "authorization"
DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class TokenTableError(ValueError):
    """A token table that cannot be used (unreadable, malformed, a token shared by two cameras)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_table(path: Path) -> dict[str, str]:
    """token digest -> camera id, from a YAML/JSON mapping `camera id: sha256:<hex> | token`."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise TokenTableError(f"token table {path}: {e.strerror}") from None
    except yaml.YAMLError:
        raise TokenTableError(f"token table {path}: not valid YAML/JSON") from None
    if not isinstance(doc, dict) or not doc:
        raise TokenTableError(f"token table {path}: expected a mapping `camera id: sha256:<hex>`")
    table: dict[str, str] = {}
    for camera, spec in doc.items():
        if not isinstance(spec, str) or not spec.strip():
            raise TokenTableError(f"token table {path}: camera {camera!r} has no token")
        m = DIGEST.match(spec.strip())
        d = m.group(1).lower() if m else digest(spec.strip())
        if d in table:
            raise TokenTableError(f"token table {path}: cameras {table[d]!r} and {camera!r} share a token")
        table[d] = str(camera)
    return table


class Auth:
    """Maps a call's metadata to the camera its token belongs to; open (None) without a table."""

    def __init__(self, table: dict[str, str] | None) -> None:
        self.table = table
        if table is None:
            log.warning("no token table: any client may send frames for any camera "
                        "(set tokens in the cloud config to require a per-camera bearer token)")
        else:
            log.info("token table: %d cameras", len(table))

    @property
    def open(self) -> bool:
        return self.table is None

    def camera(self, metadata) -> str | None:
        """The camera whose token the call carries; None if missing or unknown (never raises)."""
        value = next((v for k, v in metadata or () if k == HEADER), "")
        scheme, _, token = str(value).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.table.get(digest(token.strip())) if self.table is not None else None
