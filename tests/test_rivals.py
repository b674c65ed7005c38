"""bench/rivals.py: the codecs a camera streams instead of a split round-trip frames honestly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench import rivals
from tests.conftest import needs_shared

H, W, N = 96, 128, 12


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """A fixed camera: a textured static background and a bright square moving across it, mild noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 2) % 256, (yy * 3 + xx) % 256, (128 + 60 * np.sin(xx / 7) * np.cos(yy / 5))], -1)
    base = cv2.GaussianBlur(base.astype(np.float32), (5, 5), 1.0)
    out = []
    for t in range(N):
        f = base.copy()
        f[30:54, 8 + 8 * t : 32 + 8 * t] = (230, 200, 40)
        f += rng.normal(0, 2, f.shape)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("codec", sorted(rivals.VIDEO_CODECS))
def test_video_roundtrip_counts_every_byte(frames, codec):
    decoded, sizes = rivals.video_roundtrip(frames, codec, crf=30, fps=10, gop=5)
    assert len(decoded) == len(sizes) == N
    assert all(d.shape == (H, W, 3) and d.dtype == np.uint8 for d in decoded)
    assert all(isinstance(s, int) and s > 0 for s in sizes)
    chunks, keys = rivals.encode_video(frames, codec, crf=30, fps=10, gop=5)
    assert sizes == [len(c) for c in chunks]
    assert sum(sizes) == len(b"".join(chunks))  # the first frame's cost holds the parameter sets
    assert keys == [i % 5 == 0 for i in range(N)]
    first_nal = chunks[0][4] & 0x1F if codec == "libx264" else (chunks[0][4] >> 1) & 0x3F
    assert chunks[0][:4] == b"\x00\x00\x00\x01" and first_nal == (7 if codec == "libx264" else 32)  # SPS / VPS
    assert rivals.mean_psnr(frames, decoded) > 30
    # Every GOP repeats the parameter sets: a receiver can join at any keyframe.
    assert len(rivals.decode_video(chunks[5:], codec)) == N - 5


@pytest.mark.parametrize("codec", sorted(rivals.VIDEO_CODECS))
def test_video_quality_rises_as_crf_falls(frames, codec):
    results = [rivals.video_roundtrip(frames, codec, crf) for crf in (40, 30, 20)]
    quality = [rivals.mean_psnr(frames, d) for d, _ in results]
    cost = [sum(s) for _, s in results]
    assert quality == sorted(quality) and quality[0] < quality[-1] - 3
    assert cost == sorted(cost)


@pytest.mark.parametrize("fmt", sorted(rivals.IMAGE_FORMATS))
def test_image_roundtrip(frames, fmt):
    results = [rivals.image_roundtrip(frames, fmt, q) for q in (10, 50, 90)]
    for decoded, sizes in results:
        assert len(decoded) == len(sizes) == N
        assert all(d.shape == (H, W, 3) and d.dtype == np.uint8 for d in decoded)
    ext, flag = rivals.IMAGE_FORMATS[fmt]
    assert results[1][1] == [cv2.imencode(ext, f[..., ::-1].copy(), [flag, 50])[1].size for f in frames]
    quality = [rivals.mean_psnr(frames, d) for d, _ in results]
    assert quality == sorted(quality) and quality[0] < quality[-1] - 3


def test_image_roundtrip_keeps_rgb_order():
    red = [np.zeros((16, 16, 3), np.uint8) + np.array([255, 0, 0], np.uint8)]
    for fmt in rivals.IMAGE_FORMATS:
        decoded, _ = rivals.image_roundtrip(red, fmt, 95)
        assert decoded[0][..., 0].mean() > 200 and decoded[0][..., 2].mean() < 50
    decoded, _ = rivals.video_roundtrip(red * 2, "libx264", 20)
    assert decoded[0][..., 0].mean() > 200 and decoded[0][..., 2].mean() < 50


def test_bad_inputs(frames):
    with pytest.raises(ValueError, match="even"):
        rivals.video_roundtrip([f[:, :-1] for f in frames[:2]], "libx264", 30)
    with pytest.raises(ValueError, match="unknown video codec"):
        rivals.video_roundtrip(frames[:2], "mpeg2video", 30)
    with pytest.raises(ValueError, match="unknown image format"):
        rivals.image_roundtrip(frames[:2], "png", 50)
    with pytest.raises(ValueError, match="no frames"):
        rivals.image_roundtrip([], "jpeg", 50)
    with pytest.raises(ValueError, match="expected"):
        rivals.image_roundtrip([frames[0], frames[1][:, :64]], "jpeg", 50)


@needs_shared
def test_ped2_video_roundtrip():
    from infocut.ped2 import read_rgb, videos

    real = [read_rgb(p) for p in videos("testing")["01"][:20]]
    decoded, sizes = rivals.video_roundtrip(real, "libx264", 30)
    assert len(decoded) == 20 and decoded[0].shape == real[0].shape == (240, 360, 3)
    assert 30 < rivals.mean_psnr(real, decoded) < 45
    assert sizes[0] > 5 * np.median(sizes[1:])  # the keyframe (with SPS/PPS) dominates
