"""Instructions the ANS coder spends on a delta frame, counted by valgrind's callgrind.

This VM's timings drift by tens of percent from one minute to the next, so a change of a tenth of a
millisecond in the coder cannot be timed reliably. An instruction count is the same on every run: it
says whether a change does less work, though not how the CPU's caches take it.

The artifact's head runs once over the first frames of the clip. Then, for the working tree's
`codec/coders/ans.py` and for each `--rev` given (that revision's file alone: what it imports comes from
the working tree), a child process under callgrind codes those frames' delta frames (each against the
one before), N times. The count per delta frame is the difference of
N = 2 and N = 0, so that the start (Python, numpy, the imports) cancels out:
(I(2) - I(0)) / (2 (frames - 1)). Needs valgrind (Debian: `apt-get install valgrind`).

    python bench/coder_instructions.py --rev dbbb595        # writes bench/results/coder-instructions.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np

from infocut.settings import DEMO_ARTIFACT, DEMO_CLIP

CODER = "codec/coders/ans.py"


def head_codes(artifact: Path, source: str, frames: int) -> np.ndarray:
    """The first `frames` frames' codes of the artifact's (only) cut tensor, as the agent makes them."""
    from edge.head import Head
    from edge.preprocess import to_input
    from edge.source import open_source
    from infocut.artifact import load_artifact

    art = load_artifact(artifact)
    head = Head(art, threads=2)
    with open_source(source) as src:
        out = [head(to_input(cap.image, art.input_size)[None])[0] for _, cap in zip(range(frames), src)]
    return np.stack(out)


def child(args) -> None:
    """Code every delta frame of the saved codes `args.repeat` times with the coder module at `args.coder`."""
    from infocut.artifact import load_artifact

    spec = importlib.util.spec_from_file_location("ans_under_test", args.coder)
    ans = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ans)
    art = load_artifact(args.artifact)
    model, codes = art.entropy_models[0], np.load(args.child)
    ans.encode(codes[1], art.bits, model, codes[0])  # the constriction models are built once, not counted
    for _ in range(args.repeat):
        for i in range(1, len(codes)):
            ans.encode(codes[i], art.bits, model, codes[i - 1])


def instructions(codes: Path, coder: Path, artifact: Path, repeat: int) -> int:
    # Idle BLAS threads spin a number of times that depends on timing, and hashing is salted per process:
    # without them the count repeats to within a fraction of a percent.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", str(codes), "--coder", str(coder), "--artifact", str(artifact), "--repeat", str(repeat)],
        capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEMO_ARTIFACT)
    parser.add_argument("--source", default=str(DEMO_CLIP))
    parser.add_argument("--frames", type=int, default=21, help="frames of the clip: frames - 1 delta frames")
    parser.add_argument("--rev", action="append", default=[], help="also count this git revision's coder")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "coder-instructions.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--coder", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.frames < 2:
        parser.error("--frames: at least 2 (one delta frame)")

    from rich.console import Console
    from rich.table import Table

    from bench.common import git_revision, machine_info

    console = Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="coder-instr-") as tmp:
        codes = Path(tmp) / "codes.npy"
        np.save(codes, head_codes(args.artifact, args.source, args.frames))
        coders = {"working tree": REPO / CODER}
        for rev in args.rev:
            path = Path(tmp) / f"ans-{rev}.py"
            path.write_bytes(subprocess.run(["git", "show", f"{rev}:{CODER}"], cwd=REPO, capture_output=True,
                                            check=True).stdout)
            coders[rev] = path
        for name, path in coders.items():
            console.print(f"counting {name} under callgrind ...")
            base, twice = (instructions(codes, path, args.artifact, n) for n in (0, 2))
            rows.append({"coder": name, "instructions_per_delta_frame": (twice - base) / (2 * (args.frames - 1))})
    t = Table(title=f"ANS delta frames of {args.artifact.name}: {args.frames - 1} frames of the clip, callgrind")
    t.add_column("coder")
    t.add_column("M instructions / delta frame", justify="right")
    for r in rows:
        t.add_row(r["coder"], f"{r['instructions_per_delta_frame'] / 1e6:.2f}")
    console.print(t)
    result = {"artifact": str(args.artifact), "source": args.source, "delta_frames": args.frames - 1, "rows": rows,
              "git": git_revision(), "machine": machine_info(), "command": " ".join(sys.argv)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
