"""TLS material for the edge <-> cloud gRPC link, read once at start with errors that name the file.

grpc itself only says "handshake failed" when a PEM is wrong or missing, long after start; here a
missing file, an unreadable one or a key given as a certificate is refused before anything listens
or connects.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TLSError(ValueError):
    """TLS files that cannot be used as given."""


def read_pem(path: Path | str, what: str) -> bytes:
    """The PEM at `path`, checked to hold a `what` ('certificate' or 'private key')."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSError(f"{what} {path}: {e.strerror}") from None
    marker = b"CERTIFICATE-----" if what == "certificate" else b"PRIVATE KEY-----"
    if b"-----BEGIN " not in data or marker not in data:
        raise TLSError(f"{what} {path}: not a PEM {what}")
    return data


def _pair(cert: Path | None, key: Path | None, role: str) -> tuple[bytes, bytes] | None:
    if (cert is None) != (key is None):
        raise TLSError(f"{role}: give both the certificate and its private key, or neither")
    return None if cert is None else (read_pem(key, "private key"), read_pem(cert, "certificate"))


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """The cloud's credentials; with `client_ca`, every client must present a certificate it signed (mTLS)."""
    pair = _pair(cert, key, "cloud TLS")
    roots = read_pem(client_ca, "certificate") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def channel_credentials(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """The edge's credentials: trust `ca` (None: the system's roots) and, for mTLS, present cert/key."""
    pair = _pair(cert, key, "edge TLS client")
    roots = read_pem(ca, "certificate") if ca is not None else None
    return grpc.ssl_channel_credentials(roots, *(pair or (None, None)))
