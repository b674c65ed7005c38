"""edge.source: every kind of input yields RGB uint8 frames in order, and bad input fails clearly."""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from edge.source import Captured, SourceError, open_source

H, W = 48, 64


def write_png(path: Path, rgb: tuple[int, int, int]) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = rgb
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_mp4(path: Path, colors: list[tuple[int, int, int]], fps: int = 10) -> None:
    """An H.264 clip whose frame i is filled with colors[i] (RGB)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "10"}
        for rgb in colors:
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), rgb, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


GRAYS = [(v, v, v) for v in range(20, 240, 20)]  # 11 frames, distinct and easy to tell apart


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_mp4(path, GRAYS)
    return path


@pytest.fixture
def http_url(clip: Path):
    """The clip served over HTTP, as a network camera would serve a stream."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=clip.parent))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
    server.shutdown()
    server.server_close()


def test_folder_yields_images_in_name_order_as_rgb(tmp_path: Path) -> None:
    write_png(tmp_path / "002.png", (0, 0, 255))
    write_png(tmp_path / "000.png", (255, 0, 0))
    write_png(tmp_path / "001.PNG", (0, 255, 0))
    (tmp_path / "notes.txt").write_text("not an image")

    with open_source(str(tmp_path)) as source:
        frames = list(source)
        assert not source.live and source.fps is None

    assert [f.index for f in frames] == [0, 1, 2]
    for frame, rgb in zip(frames, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        assert isinstance(frame, Captured)
        assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
        assert (frame.image == rgb).all()
    assert frames[0].time <= frames[1].time <= frames[2].time


def test_corrupt_image_in_folder_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    write_png(tmp_path / "a.png", (10, 10, 10))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    (tmp_path / "c.jpg").write_bytes(b"")
    write_png(tmp_path / "d.png", (30, 30, 30))

    with caplog.at_level(logging.WARNING, logger="edge.source"):
        frames = list(open_source(str(tmp_path)))

    # index is the file's position in the folder, so frame labels still line up after a skip
    assert [f.index for f in frames] == [0, 3]
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 30]
    assert "b.png" in caplog.text and "c.jpg" in caplog.text


def test_folder_without_readable_images_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(SourceError, match="no readable frame"):
        open_source(str(tmp_path))


def test_video_file_yields_every_frame_in_order(clip: Path) -> None:
    with open_source(str(clip)) as source:
        assert not source.live
        assert source.fps == pytest.approx(10.0)
        frames = list(source)

    assert [f.index for f in frames] == list(range(len(GRAYS)))
    for frame, rgb in zip(frames, GRAYS):
        assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
        assert np.abs(frame.image.astype(int) - rgb).max() <= 4  # H.264 at crf 10 on a flat frame


def _decoder_threads() -> int:
    """FFmpeg's worker threads alive in this process (it names them av:CODEC:...)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text())
        except OSError:
            continue
    return sum(name.startswith("av:") for name in names)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_decode_threads_sets_ffmpegs_threads_and_not_the_frames() -> None:
    clip = Path(__file__).resolve().parent.parent / "assets" / "ped2_test01.mp4"  # big enough for frame threads
    decoded = {}
    for threads in (1, 3):
        with open_source(str(clip), decode_threads=threads) as source:
            decoded[threads] = [f.image for _, f in zip(range(12), source)]
            workers = _decoder_threads()
        assert (workers == 0) if threads == 1 else (workers >= 2), (threads, workers)
    for one, several in zip(decoded[1], decoded[3]):
        np.testing.assert_array_equal(one, several)


def test_video_file_keeps_colour_channels_in_rgb_order(tmp_path: Path) -> None:
    path = tmp_path / "red.mp4"
    write_mp4(path, [(220, 20, 20)] * 3)
    frames = list(open_source(str(path)))
    assert len(frames) == 3
    r, g, b = frames[0].image.reshape(-1, 3).mean(axis=0)
    assert r > 190 and g < 50 and b < 50


def test_file_url_is_a_local_file(clip: Path) -> None:
    source = open_source(clip.as_uri())
    assert not source.live
    assert len(list(source)) == len(GRAYS)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="no such file or folder") as err:
        open_source(str(missing))
    assert str(missing) in str(err.value)


def test_file_that_is_not_a_video_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match=str(path)):
        open_source(str(path))


def test_absent_webcam_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="webcam 97"):
        open_source("97")


def test_unreachable_stream_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="stream http://127.0.0.1:1/"):
        open_source("http://127.0.0.1:1/cam.mp4")


@pytest.mark.timeout(60)
def test_url_stream_is_live_and_reopens_when_the_stream_ends(http_url: str) -> None:
    source = open_source(http_url)
    assert source.live
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == 2 * len(GRAYS) + 1:
            break
    # the server's "stream" ended twice; a live source reopened it and kept counting
    assert [f.index for f in frames] == list(range(2 * len(GRAYS) + 1))
    assert int(frames[len(GRAYS)].image[0, 0, 0]) == pytest.approx(GRAYS[0][0], abs=4)
    source.close()
    assert list(source) == []


@pytest.mark.timeout(60)
def test_close_from_another_thread_stops_a_live_source(http_url: str) -> None:
    source = open_source(http_url)
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(f.index for f in source))
    reader.start()
    while len(seen) < 3 and reader.is_alive():
        reader.join(0.01)
    source.close()
    reader.join(15)
    assert not reader.is_alive()
    assert seen == list(range(len(seen)))
