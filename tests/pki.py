"""A throwaway certificate authority for the TLS tests: a CA, a server certificate for localhost and
127.0.0.1, and a client certificate, made with the openssl command line at test time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(out: Path) -> dict[str, Path]:
    """ca.pem, server.pem/.key (SAN localhost, 127.0.0.1), client.pem/.key (CN cam-a), in `out`."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command line to make test certificates")
    out.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=infocut test CA",
             cwd=out)
    (out / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (out / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "cam-a")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=out)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=out)
    return {k: out / f"{k}" for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
