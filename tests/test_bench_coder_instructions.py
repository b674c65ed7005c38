"""bench/coder_instructions.py: its child codes real delta frames with the coder file it is given, and under
callgrind (where valgrind is installed) the same coder counts the same instructions twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from infocut.settings import DEMO_ARTIFACT, DEMO_CLIP, REPO

SCRIPT = REPO / "bench" / "coder_instructions.py"


def test_the_child_codes_delta_frames_with_the_coder_it_is_given(tmp_path):
    from bench.coder_instructions import head_codes

    codes = head_codes(DEMO_ARTIFACT, str(DEMO_CLIP), 3)
    assert codes.shape[0] == 3 and codes.dtype == np.uint8
    np.save(tmp_path / "codes.npy", codes)
    run = [sys.executable, str(SCRIPT), "--child", str(tmp_path / "codes.npy"), "--artifact", str(DEMO_ARTIFACT),
           "--repeat", "1", "--coder"]
    assert subprocess.run([*run, str(REPO / "codec" / "coders" / "ans.py")], cwd=REPO).returncode == 0
    broken = tmp_path / "ans.py"
    broken.write_text("def encode(*a):\n    raise RuntimeError('not this coder')\n")
    assert subprocess.run([*run, str(broken)], cwd=REPO, capture_output=True).returncode != 0  # it ran that file


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_the_same_coder_counts_the_same_instructions(tmp_path):
    out = tmp_path / "instr.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--frames", "3", "--rev", "HEAD", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["coder"] for r in rows] == ["working tree", "HEAD"]
    counts = [r["instructions_per_delta_frame"] for r in rows]
    assert min(counts) > 1e6  # a delta frame of the demo is millions of instructions
    if not subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "codec/coders/ans.py"], cwd=REPO).returncode:
        assert counts[0] == pytest.approx(counts[1], rel=0.002)  # the same file: the count repeats
