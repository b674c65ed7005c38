"""Where frames come from: an image folder, a video file, a webcam or a network stream.

Every source yields the same thing, `Captured(index, time, image)` with an HxWx3 uint8 RGB image,
so the rest of the edge never cares what the camera is. Opening fails early and clearly
(`SourceError`) instead of yielding an empty stream; a live source (webcam, URL) never ends by
itself: edge/watchdog.py reopens it with backoff when its stream drops or stalls, until `close()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs 3.11; the edge also runs on 3.10 (JetPack 6)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
# A stalled network stream must not block a read forever (the watchdog gives up on it sooner or later).
NETWORK_TIMEOUT_MS = 10_000
RECONNECT_DELAY_S = (0.5, 10.0)  # first and longest wait between reopen attempts of a live source


class SourceError(OSError):
    """A source that cannot be opened or yields no frame at all."""


@dataclass(frozen=True)
class Captured:
    """One frame: its position in the stream, wall-clock capture time (unix s), HxWx3 uint8 RGB."""

    index: int
    time: float
    image: np.ndarray


class Source:
    """An iterator of `Captured` frames; `close()` may be called from another thread.

    Subclasses implement `_next_frame()` (None at the end of the stream) and `_release()`.
    """

    live: bool = False
    fps: float | None = None

    def __init__(self, description: str) -> None:
        self.description = description
        self._closed = threading.Event()
        self._reading = threading.Lock()
        self._released = False
        self._pending: Captured | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} live={self.live} fps={self.fps}>"

    def _next_frame(self) -> tuple[int, np.ndarray] | None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the source holds (a capture device, a socket)."""

    def _prime(self) -> None:
        """Read the first frame now, so an unusable source fails at open rather than later."""
        first = self._next_frame()
        if first is None:
            self.close()
            raise SourceError(f"{self.description}: no readable frame")
        self._pending = Captured(first[0], time.time(), first[1])

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Captured:
        with self._reading:
            if self._closed.is_set():
                frame = None
            elif self._pending is not None:
                frame, self._pending = self._pending, None
            else:
                item = self._next_frame()
                frame = None if item is None else Captured(item[0], time.time(), item[1])
        if frame is None or self._closed.is_set():
            self.close()
            raise StopIteration
        return frame

    def close(self) -> None:
        """Stop the stream. A read in progress in another thread finishes first and releases."""
        self._closed.set()
        # Release only while no read is in progress; otherwise the reader releases after its read.
        if self._reading.acquire(blocking=False):
            try:
                if not self._released:
                    self._released = True
                    self._release()
            finally:
                self._reading.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or gray / BGRA) uint8 -> contiguous HxWx3 RGB."""
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FolderSource(Source):
    """Images of a directory in name order; `index` is the file's position, so labels keep matching."""

    def __init__(self, folder: Path) -> None:
        super().__init__(f"image folder {folder}")
        self.paths = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
        if not self.paths:
            raise SourceError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        self._next = 0
        self._prime()

    def _next_frame(self) -> tuple[int, np.ndarray] | None:
        while self._next < len(self.paths):
            index, path = self._next, self.paths[self._next]
            self._next += 1
            image = read_image(path)
            if image is not None:
                return index, image
            log.warning("skipping unreadable image %s", path)
        return None


def read_image(path: Path) -> np.ndarray | None:
    """Decode one image file to RGB, or None if it cannot be read (bytes read by numpy: any path works)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if bgr is None else _to_rgb(bgr)


class CaptureSource(Source):
    """A cv2.VideoCapture: a video file, or one session of a webcam / network stream (ends when it drops)."""

    def __init__(self, target: str | int, description: str, live: bool, decode_threads: int = 1) -> None:
        super().__init__(description)
        self.target = target
        self.live = live
        self.decode_threads = decode_threads
        self._count = 0
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"{description}: cannot open")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else None  # streams often report 0 or a clock rate
        ok, bgr = self._cap.read()
        if not ok:
            self.close()
            raise SourceError(f"{description}: opened but no frame could be decoded")
        self._pending = Captured(self._count, time.time(), _to_rgb(bgr))
        self._count += 1

    def _open(self) -> cv2.VideoCapture | None:
        if isinstance(self.target, int):
            cap = cv2.VideoCapture(self.target)
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                      NETWORK_TIMEOUT_MS, cv2.CAP_PROP_N_THREADS, self.decode_threads]
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _next_frame(self) -> tuple[int, np.ndarray] | None:
        if self._cap is None:
            return None
        ok, bgr = self._cap.read()
        if not ok:
            if self.live:
                log.warning("%s: stream lost", self.description)
            return None
        self._count += 1
        return self._count - 1, _to_rgb(bgr)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def is_live(spec: str) -> bool:
    """A webcam index or a network stream (which never ends), as opposed to a file or a folder."""
    if urlparse(spec).scheme.lower() in URL_SCHEMES:
        return True
    return spec.isdigit() and not Path(spec).exists()


def open_source(spec: str, stall_timeout_s: float = 10.0, on_reopen: Callable[[str], None] | None = None,
                decode_threads: int = 1) -> Source:
    """Open a directory of images, a video file, a webcam index ("0") or a URL (rtsp/http(s)/file).

    A live source is watched (edge/watchdog.py): reopened when silent for `stall_timeout_s` (0: only when its
    stream ends), `on_reopen(reason)` each time. `decode_threads`: FFmpeg's threads decoding a file or stream
    (0: FFmpeg's choice, about one per core). One costs the least CPU per frame (frame threads add hand-offs:
    0.7 against 1.0 ms a frame on the demo clip), which matters when the head needs every core."""
    from edge.watchdog import Watchdog

    def watched(target: str | int, description: str) -> Source:
        return Watchdog(lambda: CaptureSource(target, description, live=True, decode_threads=decode_threads),
                        description, stall_timeout_s, on_reopen)

    scheme = urlparse(spec).scheme.lower()
    if scheme in URL_SCHEMES:
        return watched(spec, f"stream {spec}")
    path = Path(unquote(urlparse(spec).path)) if scheme == "file" else Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return CaptureSource(str(path), f"video file {path}", live=False, decode_threads=decode_threads)
    if spec.isdigit():
        return watched(int(spec), f"webcam {spec}")
    if path.exists():
        raise SourceError(f"{path}: neither a folder nor a regular file")
    raise SourceError(f"{path}: no such file or folder (expected an image folder, a video file, "
                      "a webcam index such as 0, or an rtsp:// / http(s):// URL)")
