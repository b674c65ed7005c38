"""Frame preprocessing on the edge: only a resize, since head.onnx takes raw uint8 RGB.

Normalisation lives inside head.onnx (see splitter/export.py) so that the edge cannot drift
from what the splitter calibrated: the manifest fixes the input size, the graph does the rest.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB -> (height, width, 3) uint8, area-averaged when shrinking."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def one_opencv_thread() -> None:
    """Keep OpenCV to the calling thread, process-wide. Its worker pool spin-waits after each parallel call,
    taking CPU from onnxruntime's threads, and the edge resizes in its capture thread, beside the head, where
    one thread is enough (bench/edge.py: a few points less CPU overhead)."""
    cv2.setNumThreads(1)
