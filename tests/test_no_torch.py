"""The edge and cloud never import torch: a Raspberry Pi installs infocut[edge] only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infocut.settings import REPO

MODULES = [
    "edge.agent", "edge.source", "edge.head", "edge.preprocess", "edge.spool", "edge.config", "edge.link",
    "edge.metrics", "edge.stages", "edge.outbox", "edge.watchdog", "edge.providers", "infocut.tls",
    "cloud.server", "cloud.service", "cloud.tail", "cloud.store", "cloud.api", "cloud.auth",
    "codec", "protos.infocut_pb2_grpc", "infocut.cli", "infocut.demo", "infocut.pipeline",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_does_not_import_torch(module: str):
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'splitter', 'onnx', 'sklearn'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"importing {module} pulls in: {proc.stderr.strip().splitlines()[-1]}"


def test_edge_cli_help_runs_without_torch():
    """`infocut edge --help` must work on an edge install, which has no torch to fall back on."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['infocut', 'edge', '--help']\n"
        "from infocut.cli import app\n"
        "app()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--artifact" in proc.stdout
