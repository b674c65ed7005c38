"""zstd over the code bytes: the general-purpose baseline entropy coder.

Decoding trusts nothing in the payload: the declared content size must equal prod(shape), the output
is capped at that size (no decompression bombs) and trailing data after the zstd frame is refused.
"""

from __future__ import annotations

import numpy as np
import zstandard

from codec.coders._common import check_codes, element_count, finish_decode
from codec.errors import CodecError
from codec.quantizer import check_bits

NAME = "zstd"
ID = 1
LEVEL = 3  # module-wide default; level 3 is zstd's own default, fast enough for the edge


def encode(codes: np.ndarray, bits: int, level: int | None = None) -> bytes:
    flat = check_codes(codes, bits)
    cctx = zstandard.ZstdCompressor(level=LEVEL if level is None else level, write_content_size=True)
    return cctx.compress(flat.tobytes())


def decode(payload: bytes, shape: tuple, bits: int) -> np.ndarray:
    bits = check_bits(bits)
    n = element_count(shape)
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd payload has no valid zstd frame header ({e})") from None
    if declared not in (n, -1):  # -1: the header does not say (other encoders may omit it)
        raise CodecError(f"zstd payload declares {declared} bytes, shape {tuple(shape)} needs {n}")
    try:
        # max_output_size caps frames that do not declare their size (0 would mean "unbounded")
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(n, 1), allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd payload corrupt or does not decode to {n} bytes ({e})") from None
    return finish_decode(np.frombuffer(out, dtype=np.uint8).copy(), shape, bits, NAME)
