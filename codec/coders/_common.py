"""Checks every coder shares, so each one validates input and output the same way."""

from __future__ import annotations

import math

import numpy as np

from codec.errors import CodecError
from codec.quantizer import check_bits


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The codes as a flat uint8 array, refusing values that do not fit in `bits` bits."""
    bits = check_bits(bits)
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise CodecError(f"codes must be a uint8 numpy array, got {getattr(codes, 'dtype', type(codes))}")
    flat = codes.reshape(-1)
    if bits < 8 and flat.size and int(flat.max()) >= 1 << bits:
        raise CodecError(f"code {int(flat.max())} does not fit in {bits} bits")
    return flat


def element_count(shape: tuple[int, ...]) -> int:
    """prod(shape) in Python ints (no overflow on hostile dims)."""
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise CodecError(f"invalid shape {shape!r}")
    return math.prod(int(d) for d in shape)


def finish_decode(flat: np.ndarray, shape: tuple[int, ...], bits: int, coder: str) -> np.ndarray:
    """Reshape decoded codes, refusing a wrong count or a code out of range."""
    n = element_count(shape)
    if flat.size != n:
        raise CodecError(f"{coder} payload decodes to {flat.size} codes, shape {tuple(shape)} needs {n}")
    if bits < 8 and n and int(flat.max()) >= 1 << bits:
        raise CodecError(f"{coder} payload holds code {int(flat.max())}, which does not fit in {bits} bits")
    return flat.reshape(tuple(int(d) for d in shape))
