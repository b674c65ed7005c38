"""Execution-provider selection for the head and the tail: auto picks the best available, an
unavailable one is a clear error at start that lists what this onnxruntime has."""

from __future__ import annotations

import os
import subprocess
import sys

import onnxruntime as ort
import pytest

from edge import providers as eps
from edge.head import Head
from infocut.artifact import load_artifact
from infocut.settings import DEMO_ARTIFACT, REPO

CPU, CUDA, TRT = eps.NAMES["cpu"], eps.NAMES["cuda"], eps.NAMES["tensorrt"]


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    assert eps.resolve("auto", [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert eps.resolve("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert eps.resolve("auto", ["AzureExecutionProvider", CPU]) == [CPU]


def test_a_list_keeps_its_order_and_the_cpu_comes_last():
    assert eps.resolve("cuda", [TRT, CUDA, CPU]) == [CUDA, CPU]
    assert eps.resolve("tensorrt, cuda", [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert eps.resolve("cpu,cuda", [CUDA, CPU]) == [CPU, CUDA]
    assert eps.short([TRT, CPU]) == "tensorrt,cpu"


@pytest.mark.parametrize("spec, message", [("gpu", "unknown gpu"), ("", "give auto"), ("auto,cpu", "auto stands alone")])
def test_bad_requests_are_clear(spec, message):
    with pytest.raises(eps.ProviderError, match=message):
        eps.resolve(spec, [CPU])


def test_on_this_cpu_machine(demo_artifact):
    have = ort.get_available_providers()
    if CUDA in have:
        pytest.skip("this onnxruntime has CUDA: the error case needs a CPU-only build")
    assert eps.resolve("auto") == [CPU]
    head = Head(load_artifact(DEMO_ARTIFACT), threads=1, providers="auto")
    assert head.providers == [CPU]
    with pytest.raises(eps.ProviderError) as err:
        Head(load_artifact(DEMO_ARTIFACT), threads=1, providers="cuda")
    assert "cuda not available" in str(err.value) and CPU in str(err.value)


def test_edge_asking_for_cuda_stops_at_start_listing_what_there_is(tmp_path):
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    proc = subprocess.run(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source",
         str(REPO / "assets" / "ped2_test01.mp4"), "--cloud", "127.0.0.1:1", "--spool", str(tmp_path / "spool"),
         "--providers", "cuda"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr
    assert "cuda not available" in proc.stderr and "CPUExecutionProvider" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "infocut", "edge", "--artifact", str(DEMO_ARTIFACT), "--source", "0",
         "--spool", str(tmp_path / "spool"), "--providers", "gpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "providers" in bad.stderr and "unknown gpu" in bad.stderr, bad.stderr
