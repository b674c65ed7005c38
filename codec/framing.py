"""Framing of one encoded frame: one or more code tensors, their shapes, and a CRC32.

Layout (little endian):
    magic b"IC" | version u8 (=1) | flags u8 (bit0 = key frame) | coder id u8 | bits u8 | n_tensors u8
    per tensor: dtype u8 (0 = uint8) | ndim u8 | dims u32 * ndim | payload_len u32
    payloads, in tensor order
    CRC32 u32 over every byte before it
A decoder refuses anything that is not exactly one such frame, so a corrupt frame is rejected alone.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from codec.coders import get_coder
from codec.errors import CodecError
from codec.quantizer import check_bits

MAGIC = b"IC"
VERSION = 1
FLAG_KEY = 0x01  # the frame does not depend on any earlier frame
DTYPE_UINT8 = 0
MAX_ELEMENTS = 1 << 28  # per tensor; bounds what a hostile header can make a decoder allocate

_HEADER = struct.Struct("<2sBBBBB")
_TENSOR_HEAD = struct.Struct("<BB")
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class DecodedFrame:
    tensors: list[np.ndarray]
    bits: int
    coder: str
    flags: int
    version: int

    @property
    def key_frame(self) -> bool:
        return bool(self.flags & FLAG_KEY)


def _u8(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 0xFF:
        raise CodecError(f"{what} must be an integer in 0..255, got {value!r}")
    return int(value)


def encode_frame(tensors: list[np.ndarray], bits: int, coder: str, flags: int = 0) -> bytes:
    bits = check_bits(bits)
    flags = _u8(flags, "flags")
    coder_mod = get_coder(coder)
    if not 1 <= len(tensors) <= 0xFF:
        raise CodecError(f"a frame carries 1..255 tensors, got {len(tensors)}")
    heads, payloads = [], []
    for i, t in enumerate(tensors):
        if not isinstance(t, np.ndarray) or t.dtype != np.uint8:
            raise CodecError(f"tensor {i} must be a uint8 numpy array, got {getattr(t, 'dtype', type(t))}")
        if t.ndim > 0xFF or any(d > 0xFFFFFFFF for d in t.shape):
            raise CodecError(f"tensor {i} shape {t.shape} does not fit the frame header")
        if t.size > MAX_ELEMENTS:
            raise CodecError(f"tensor {i} has {t.size} elements, limit is {MAX_ELEMENTS}")
        payload = coder_mod.encode(t, bits)
        heads.append(_TENSOR_HEAD.pack(DTYPE_UINT8, t.ndim) + struct.pack(f"<{t.ndim}I", *t.shape)
                     + _U32.pack(len(payload)))
        payloads.append(payload)
    body = b"".join(
        [_HEADER.pack(MAGIC, VERSION, flags, coder_mod.ID, bits, len(tensors)), *heads, *payloads]
    )
    return body + _U32.pack(zlib.crc32(body))


def _need(data: bytes, end: int, what: str) -> None:
    if len(data) < end:
        raise CodecError(f"frame truncated: {len(data)} bytes, {what} needs {end}")


def decode_frame(data: bytes) -> DecodedFrame:
    """Check structure, then CRC, then meaning; every failure is a CodecError saying which."""
    data = bytes(data)
    _need(data, _HEADER.size, "the header")
    magic, version, flags, coder_id, bits, n_tensors = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}: not an infocut frame")
    if version != VERSION:
        raise CodecError(f"unsupported frame version {version} (this decoder reads {VERSION})")
    pos = _HEADER.size
    shapes, dtypes, lengths = [], [], []
    for i in range(n_tensors):
        _need(data, pos + _TENSOR_HEAD.size, f"tensor {i} header")
        dtype, ndim = _TENSOR_HEAD.unpack_from(data, pos)
        pos += _TENSOR_HEAD.size
        _need(data, pos + 4 * ndim + 4, f"tensor {i} header")
        shapes.append(struct.unpack_from(f"<{ndim}I", data, pos))
        pos += 4 * ndim
        lengths.append(_U32.unpack_from(data, pos)[0])
        dtypes.append(dtype)
        pos += 4
    payload_total = sum(lengths)
    expected = pos + payload_total + 4
    if len(data) < expected:
        present = len(data) - pos
        if present < payload_total:
            raise CodecError(f"frame truncated: header says {payload_total} payload bytes, {present} present")
        raise CodecError(f"frame truncated: CRC32 missing ({present - payload_total} of 4 bytes present)")
    if len(data) > expected:
        raise CodecError(f"trailing bytes: frame is {len(data)} bytes, its header accounts for {expected}")
    stored, computed = _U32.unpack_from(data, expected - 4)[0], zlib.crc32(data[: expected - 4])
    if stored != computed:
        raise CodecError(f"CRC32 mismatch: frame corrupted (stored {stored:#010x}, computed {computed:#010x})")
    if n_tensors == 0:
        raise CodecError("frame carries no tensors")
    coder = get_coder(coder_id)
    check_bits(bits)
    tensors = []
    for i, (dtype, shape, length) in enumerate(zip(dtypes, shapes, lengths)):
        if dtype != DTYPE_UINT8:
            raise CodecError(f"tensor {i} has unknown dtype code {dtype} (only 0 = uint8)")
        if math.prod(shape) > MAX_ELEMENTS:
            raise CodecError(f"tensor {i} shape {shape} has more than {MAX_ELEMENTS} elements")
        try:
            tensors.append(coder.decode(data[pos : pos + length], shape, bits))
        except CodecError as e:
            raise CodecError(f"tensor {i}: {e}") from None
        pos += length
    return DecodedFrame(tensors=tensors, bits=bits, coder=coder.NAME, flags=flags, version=version)
