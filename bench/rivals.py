"""What a camera streams instead of a split: H.264 / H.265 as a live camera encodes it, and JPEG / WebP.

The rival of a split is the video a camera streams to a cloud model today (DESIGN.md). This module
round-trips frames through those codecs so a benchmark can feed the decoded frames to the same
model and compare task accuracy at equal bytes per frame.

Video (``video_roundtrip``), PyAV's libx264 / libx265, encoded as a live camera does it:
  - one stream per video, frames at ``fps`` (Ped2: 10), yuv420p (BT.601, limited range, swscale);
  - no B-frames and no lookahead (x264 and x265 ``tune=zerolatency``): every frame leaves the
    encoder as soon as it is captured, as exactly one packet, in capture order;
  - a fixed GOP of ``gop`` frames, by default ``GOP_SECONDS`` = 2 s (the usual default I-frame
    interval of IP cameras, 1-2 s); scene-cut detection off, closed GOPs: every GOP opens with an
    IDR that carries the parameter sets again (SPS/PPS, and VPS for H.265), so a receiver can join
    at any keyframe; ``gop=0`` leaves the encoder's default (keyint 250: one keyframe per Ped2 video);
  - constant rate factor ``crf``, the encoders' default preset (medium), one thread (a bitstream
    that does not depend on the machine's core count);
  - SEI NAL units are dropped from the bitstream (ffmpeg's filter_units bitstream filter): here they
    only hold the encoder's banner of its options (x264: ~0.6 KB in the first frame, x265: ~2.3 KB at
    every keyframe), which no camera sends and no decoder needs.
The per-frame cost is the size of that frame's packet; the first frame's packet holds the parameter
sets, so the costs sum to the size of the whole stream. The frames are decoded back from that stream
(the concatenated packets, split again by ffmpeg's parser), which checks it is self-contained.

Images (``image_roundtrip``): OpenCV's JPEG (libjpeg defaults: 4:2:0, no Huffman optimisation, as
MJPEG) and WebP (lossy for quality 1-100), one image per frame.

CLI: a sanity table for one Ped2 test video (bytes per frame, mean and p95, and mean per-frame RGB
PSNR), for every codec at a ladder of settings:

    .venv/bin/python bench/rivals.py [--video 01] [--gop 20 | --gop 0] [--frames N]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import av
import cv2
import numpy as np
from av.bitstream import BitStreamFilterContext

GOP_SECONDS = 2

# encoder -> (decoder, bitstream filter that drops SEI NAL units: H.264 type 6, H.265 prefix/suffix 39/40)
VIDEO_CODECS = {
    "libx264": ("h264", "filter_units=remove_types=6"),
    "libx265": ("hevc", "filter_units=remove_types=39|40"),
}
IMAGE_FORMATS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY),
    "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY),
}

# The CLI's ladders.
CRFS = (23, 28, 30, 35, 40, 45)
QUALITIES = (5, 20, 40, 60, 80, 95)


def _check_frames(frames: list[np.ndarray], even: bool) -> tuple[int, int]:
    if not frames:
        raise ValueError("no frames")
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.shape != (h, w, 3):
            raise ValueError(f"frame {i}: expected {h}x{w}x3 uint8 RGB, got {f.shape} {f.dtype}")
    if even and (h % 2 or w % 2):
        raise ValueError(f"yuv420p needs an even width and height, got {w}x{h}")
    return h, w


def video_options(codec: str, crf: int, gop: int) -> dict[str, str]:
    """The encoder's private options: live-camera settings (see the module's docstring)."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f"unknown video codec {codec!r} (have {sorted(VIDEO_CODECS)})")
    if gop < 0:
        raise ValueError(f"gop must be >= 0 (0: encoder default), got {gop}")
    if codec == "libx264":
        params = ["scenecut=0"] + ([f"keyint={gop}"] if gop else [])
        return {"crf": str(crf), "tune": "zerolatency", "x264-params": ":".join(params)}
    params = ["log-level=error", "pools=1", "scenecut=0", "open-gop=0"]
    params += [f"keyint={gop}", f"min-keyint={gop}"] if gop else []
    return {"crf": str(crf), "tune": "zerolatency", "x265-params": ":".join(params)}


def encode_video(frames: list[np.ndarray], codec: str, crf: int, fps: int = 10,
                 gop: int | None = None) -> tuple[list[bytes], list[bool]]:
    """RGB frames -> one bitstream chunk per frame (Annex B, SEI dropped) and whether each is a keyframe.

    ``gop`` is the keyframe interval in frames: None = GOP_SECONDS * fps, 0 = the encoder's default.
    """
    h, w = _check_frames(frames, even=True)
    gop = GOP_SECONDS * fps if gop is None else gop
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, fps), Fraction(fps)
    ctx.thread_count = 1
    ctx.options = video_options(codec, crf, gop)
    decoder, bsf = VIDEO_CODECS[codec]
    strip = BitStreamFilterContext(bsf, decoder)

    packets = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i, ctx.time_base
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    if ctx.extradata_size:  # parameter sets went out of band: the per-frame costs would miss them
        raise RuntimeError(f"{codec} put its parameter sets in extradata, not in the stream")

    out = []
    for packet in packets:
        out += strip.filter(packet)
    out += strip.filter(None)
    pts = [p.pts for p in out]
    if pts != list(range(len(frames))):
        raise RuntimeError(f"{codec}: {len(frames)} frames gave packets with pts {pts}: not one packet per frame")
    return [bytes(p) for p in out], [bool(p.is_keyframe) for p in out]


def decode_video(chunks: list[bytes], codec: str) -> list[np.ndarray]:
    """The concatenated chunks, split by ffmpeg's parser as a receiver would, decoded to RGB frames."""
    decoder = VIDEO_CODECS[codec][0] if codec in VIDEO_CODECS else codec
    ctx = av.CodecContext.create(decoder, "r")
    ctx.thread_count = 1
    stream = b"".join(chunks)
    packets = ctx.parse(stream) + ctx.parse(None)
    sizes = [p.size for p in packets]
    if sizes != [len(c) for c in chunks]:
        raise RuntimeError(f"{codec}: the parser split the stream into {len(sizes)} packets, not the "
                           f"encoder's {len(chunks)} frames")
    frames = []
    for packet in packets:
        frames += ctx.decode(packet)
    frames += ctx.decode(None)
    return [f.to_ndarray(format="rgb24") for f in frames]


def video_roundtrip(frames: list[np.ndarray], codec: str, crf: int, fps: int = 10,
                    gop: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Encode RGB frames as a live camera streams them, decode them back.

    Returns the decoded HxWx3 uint8 RGB frames (same count and order) and each frame's cost in bytes
    (its packet, the first one with the parameter sets: they sum to the stream's size).
    """
    chunks, _ = encode_video(frames, codec, crf, fps, gop)
    decoded = decode_video(chunks, codec)
    if len(decoded) != len(frames):
        raise RuntimeError(f"{codec}: encoded {len(frames)} frames, decoded {len(decoded)}")
    return decoded, [len(c) for c in chunks]


def image_roundtrip(frames: list[np.ndarray], fmt: str, quality: int) -> tuple[list[np.ndarray], list[int]]:
    """Each RGB frame through OpenCV's JPEG or WebP at ``quality`` (1-100); the decoded frames and bytes each."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r} (have {sorted(IMAGE_FORMATS)})")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    _check_frames(frames, even=False)
    ext, flag = IMAGE_FORMATS[fmt]
    decoded, sizes = [], []
    for i, rgb in enumerate(frames):
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), [flag, quality])
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if bgr is None:
            raise RuntimeError(f"{fmt} round trip failed on frame {i}")
        decoded.append(np.ascontiguousarray(bgr[..., ::-1]))
        sizes.append(int(buf.size))
    return decoded, sizes


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two uint8 images over all pixels and channels (100 dB when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10 * np.log10(peak**2 / mse))


def mean_psnr(originals: list[np.ndarray], decoded: list[np.ndarray]) -> float:
    """Mean over frames of the per-frame PSNR (dB)."""
    return float(np.mean([psnr(a, b) for a, b in zip(originals, decoded, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from infocut.ped2 import read_rgb, videos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default="01", help="UCSD Ped2 test video (default 01)")
    parser.add_argument("--fps", type=int, default=10, help="frame rate the encoders are told (default 10)")
    parser.add_argument("--gop", type=int, default=None,
                        help=f"keyframe interval in frames (default {GOP_SECONDS} s = {GOP_SECONDS} x fps; "
                             "0: encoder default, keyint 250)")
    parser.add_argument("--frames", type=int, default=0, help="only the first N frames (default: all)")
    args = parser.parse_args(argv)

    tests = videos("testing")
    if args.video not in tests:
        raise SystemExit(f"no Ped2 test video {args.video!r} (have {', '.join(tests)})")
    paths = tests[args.video][: args.frames or None]
    frames = [read_rgb(p) for p in paths]
    gop = GOP_SECONDS * args.fps if args.gop is None else args.gop
    h, w = frames[0].shape[:2]

    table = Table(title=f"Ped2 test {args.video}: {len(frames)} frames {w}x{h} at {args.fps} fps, "
                        f"GOP {gop or 'encoder default (250)'}")
    for col in ("rival", "setting", "B/frame mean", "B/frame p95", "kbit/s", "PSNR dB", "s"):
        table.add_column(col, justify="left" if col in ("rival", "setting") else "right")
    runs = [(c, f"crf {q}", lambda c=c, q=q: video_roundtrip(frames, c, q, args.fps, gop))
            for c in VIDEO_CODECS for q in CRFS]
    runs += [(f, f"q {q}", lambda f=f, q=q: image_roundtrip(frames, f, q)) for f in IMAGE_FORMATS for q in QUALITIES]
    last = None
    for name, setting, fn in runs:
        t0 = time.perf_counter()
        decoded, sizes = fn()
        secs = time.perf_counter() - t0
        if last is not None and name != last:
            table.add_section()
        last = name
        table.add_row(name, setting, f"{np.mean(sizes):,.0f}", f"{np.percentile(sizes, 95):,.0f}",
                      f"{np.mean(sizes) * 8 * args.fps / 1000:,.1f}", f"{mean_psnr(frames, decoded):.2f}",
                      f"{secs:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
