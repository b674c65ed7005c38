"""Rebuild the bundled demo clip assets/ped2_test01.mp4 from the UCSD Ped2 test frames.

The demo streams a real surveillance clip with known anomalies, so its alerts can be checked
against ground truth. This script turns test video 01's JPEG frames into a high-quality H.264
file and writes its frame labels next to it:

    .venv/bin/python bench/make_clip.py [--shared ../shared] [--video 01] [--crf 17]
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infocut.settings import DEMO_CLIP, shared_dir

MAX_BYTES = 5 * 1024 * 1024  # the clip lives in git: keep it small


def read_labels(shared: Path, video: str) -> dict:
    """The video's entry of testing/labels.json: {"frames": N, "anomalous": [[start, end], ...]} (1-based)."""
    labels = json.loads((shared / "data/ucsd_ped2/testing/labels.json").read_text())
    if video not in labels["videos"]:
        raise SystemExit(f"video {video!r} not in labels.json (have {sorted(labels['videos'])})")
    return labels["videos"][video]


def encode(frames: list[Path], out: Path, fps: int, crf: int) -> None:
    """JPEG frames -> H.264 (libx264, yuv420p) MP4, moov atom first so it can stream over HTTP."""
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    height, width = first.shape[:2]
    with av.open(str(out), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "slow"}
        for i, path in enumerate(frames):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape[:2] != (height, width):
                raise SystemExit(f"{path}: unreadable or not {width}x{height}")
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
            if (i + 1) % 30 == 0 or i + 1 == len(frames):
                print(f"  encoded {i + 1}/{len(frames)} frames", flush=True)
        for packet in stream.encode():
            container.mux(packet)


def count_decoded(path: Path) -> tuple[int, tuple[int, ...]]:
    """Frames OpenCV (what the edge uses) decodes from the clip, and their shape."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n, shape = 0, ()
    while True:
        ok, image = cap.read()
        if not ok:
            break
        n, shape = n + 1, image.shape
    cap.release()
    return n, shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=shared_dir(),
                        help="shared data folder ($INFOCUT_SHARED, else ../shared beside the repo)")
    parser.add_argument("--video", default="01", help="UCSD Ped2 test video number (default 01)")
    parser.add_argument("--out", type=Path, default=DEMO_CLIP, help="output .mp4 (labels go beside it)")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--crf", type=int, default=17, help="x264 quality, lower is better (default 17)")
    args = parser.parse_args(argv)

    folder = args.shared / "data/ucsd_ped2/testing/frames" / args.video
    frames = sorted(folder.glob("*.jpg"))
    if not frames:
        raise SystemExit(f"no frames in {folder}: pass --shared or set INFOCUT_SHARED")
    labels = read_labels(args.shared, args.video)
    if labels["frames"] != len(frames):
        raise SystemExit(f"{folder} has {len(frames)} frames but labels.json says {labels['frames']}")

    print(f"encoding {len(frames)} frames of {folder} -> {args.out} ({args.fps} fps, crf {args.crf})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    encode(frames, args.out, args.fps, args.crf)

    size = args.out.stat().st_size
    decoded, shape = count_decoded(args.out)
    print(f"wrote {args.out}: {size / 1e6:.2f} MB, decodes to {decoded} frames of {shape}")
    if decoded != len(frames):
        raise SystemExit(f"decoded {decoded} frames, expected {len(frames)}")
    if size >= MAX_BYTES:
        raise SystemExit(f"{args.out} is {size} bytes, over the {MAX_BYTES} limit: raise --crf")

    labels_path = args.out.with_suffix(".labels.json")
    labels_path.write_text(json.dumps({
        "video": args.out.name,
        "frames": len(frames),
        "fps": args.fps,
        "anomalous": labels["anomalous"],
        "index_base": 1,
    }) + "\n")
    print(f"wrote {labels_path}: anomalous frames {labels['anomalous']} (1-based, inclusive)")


if __name__ == "__main__":
    main()
