"""Plain bit packing at `bits` bits per code: the baseline every entropy coder must beat.

Layout: code i occupies stream bits i*bits .. i*bits+bits-1, least significant bit first, bytes
filled from their least significant bit; the unused high bits of the last byte are zero.
Every 8 codes fill exactly `bits` bytes, so packing works on one little-endian uint64 word per
group of 8 codes: 8 vectorized shifts instead of a Python loop or per-bit arrays.
"""

from __future__ import annotations

import numpy as np

from codec.coders._common import check_codes, element_count, finish_decode
from codec.errors import CodecError
from codec.quantizer import check_bits

NAME = "raw"
ID = 0


def encode(codes: np.ndarray, bits: int) -> bytes:
    flat = check_codes(codes, bits)
    n = flat.size
    groups = -(-n // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:n] = flat
    cols = padded.reshape(groups, 8)
    words = cols[:, 0].copy()
    for k in range(1, 8):
        words |= cols[:, k] << np.uint64(k * bits)
    packed = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :bits]
    return packed.tobytes()[: (n * bits + 7) // 8]


def decode(payload: bytes, shape: tuple, bits: int) -> np.ndarray:
    bits = check_bits(bits)
    n = element_count(shape)
    need = (n * bits + 7) // 8
    if len(payload) != need:
        raise CodecError(
            f"raw payload is {len(payload)} bytes, shape {tuple(shape)} at {bits} bits needs {need}"
        )
    groups = -(-n // 8)
    stream = np.zeros(groups * bits, dtype=np.uint8)
    stream[:need] = np.frombuffer(payload, dtype=np.uint8)
    grid = np.zeros((groups, 8), dtype=np.uint8)
    grid[:, :bits] = stream.reshape(groups, bits)
    words = grid.view("<u8").reshape(groups)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for k in range(8):
        out[:, k] = (words >> np.uint64(k * bits)) & mask
    flat = out.reshape(-1)
    if flat[n:].any():
        raise CodecError("raw payload has nonzero padding bits after the last code")
    return finish_decode(flat[:n], shape, bits, NAME)
