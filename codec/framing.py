"""Framing of one encoded frame: one or more code tensors, their shapes, and a CRC32.

Layout (little endian):
    magic b"IC" | version u8 (=2) | flags u8 (bit0 = key frame, bit1 = delta) | coder id u8 | bits u8 | n_tensors u8
    delta frames only: ref_distance u32 (the reference is the frame ref_distance seqs back)
    per tensor: dtype u8 (0 = uint8) | ndim u8 | dims u32 * ndim | payload_len u32
    payloads, in tensor order
    CRC32 u32 over every byte before it
A decoder refuses anything that is not exactly one such frame, so a corrupt frame is rejected alone.
A delta frame is coded against the codes of an earlier frame of the same camera; decoding it needs
those codes, and a decoder that does not hold them refuses the frame with MissingReference (the
sender then starts again from a key frame), never guesses.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from codec.coders import get_coder, needs_model
from codec.entropy_model import EntropyModel
from codec.errors import CodecError, MissingReference
from codec.quantizer import check_bits

MAGIC = b"IC"
VERSION = 2  # 2: delta frames code runs of unchanged codes (codec/coders/ans.py); 1 is refused
FLAG_KEY = 0x01  # the frame does not depend on any earlier frame
FLAG_DELTA = 0x02  # coded against an earlier frame's codes (ref_distance follows the header)
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
    ref_distance: int = 0  # delta frames: how many seqs back the reference frame is

    @property
    def key_frame(self) -> bool:
        return bool(self.flags & FLAG_KEY)

    @property
    def delta(self) -> bool:
        return bool(self.flags & FLAG_DELTA)


def _u8(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 0xFF:
        raise CodecError(f"{what} must be an integer in 0..255, got {value!r}")
    return int(value)


def encode_frame(
    tensors: list[np.ndarray], bits: int, coder: str, flags: int = 0,
    models: Sequence[EntropyModel] | None = None, refs: Sequence[np.ndarray] | None = None, ref_distance: int = 0,
) -> bytes:
    """One frame. `models`: the artifact's entropy model per tensor (coders that need one); `refs` and
    `ref_distance`: code a delta frame against these codes of the frame `ref_distance` seqs back."""
    bits = check_bits(bits)
    flags = _u8(flags, "flags")
    if flags & FLAG_DELTA:
        raise CodecError("the delta flag is set by giving refs, not by hand")
    coder_mod = get_coder(coder)
    if not 1 <= len(tensors) <= 0xFF:
        raise CodecError(f"a frame carries 1..255 tensors, got {len(tensors)}")
    kw = _coder_args(coder_mod.NAME, len(tensors), models, refs)
    extra = b""
    if refs is not None:
        if not 1 <= ref_distance <= 0xFFFFFFFF or flags & FLAG_KEY:
            raise CodecError(f"a delta frame needs ref_distance in 1..2**32-1 and no key flag, got {ref_distance}")
        flags |= FLAG_DELTA
        extra = _U32.pack(ref_distance)
    heads, payloads = [], []
    for i, t in enumerate(tensors):
        if not isinstance(t, np.ndarray) or t.dtype != np.uint8:
            raise CodecError(f"tensor {i} must be a uint8 numpy array, got {getattr(t, 'dtype', type(t))}")
        if t.ndim > 0xFF or any(d > 0xFFFFFFFF for d in t.shape):
            raise CodecError(f"tensor {i} shape {t.shape} does not fit the frame header")
        if t.size > MAX_ELEMENTS:
            raise CodecError(f"tensor {i} has {t.size} elements, limit is {MAX_ELEMENTS}")
        payload = coder_mod.encode(t, bits, **kw[i])
        heads.append(_TENSOR_HEAD.pack(DTYPE_UINT8, t.ndim) + struct.pack(f"<{t.ndim}I", *t.shape)
                     + _U32.pack(len(payload)))
        payloads.append(payload)
    body = b"".join(
        [_HEADER.pack(MAGIC, VERSION, flags, coder_mod.ID, bits, len(tensors)), extra, *heads, *payloads]
    )
    return body + _U32.pack(zlib.crc32(body))


def _coder_args(coder: str, n: int, models, refs) -> list[dict]:
    """Per tensor, the keyword arguments the coder takes: its entropy model and reference, if any."""
    if not needs_model(coder):
        if refs is not None:
            raise CodecError(f"the {coder} coder codes every frame alone; it has no delta frames")
        return [{}] * n
    if models is None or len(models) != n:
        raise CodecError(f"the {coder} coder needs the artifact's entropy model for each of the {n} tensors")
    if refs is not None and len(refs) != n:
        raise CodecError(f"a delta frame needs a reference for each of the {n} tensors, got {len(refs)}")
    return [{"model": models[i], "ref": None if refs is None else refs[i]} for i in range(n)]


def _need(data: bytes, end: int, what: str) -> None:
    if len(data) < end:
        raise CodecError(f"frame truncated: {len(data)} bytes, {what} needs {end}")


def decode_frame(
    data: bytes, models: Sequence[EntropyModel] | None = None,
    reference: Callable[[int], list[np.ndarray] | None] | None = None,
    expect_shapes: Sequence[tuple[int, ...]] | None = None,
) -> DecodedFrame:
    """Check structure, then CRC, then meaning; every failure is a CodecError saying which.
    `models`: the artifact's entropy models (coders that need them); `reference(ref_distance)`: the
    codes of the frame that many seqs back, or None when not held (then MissingReference); `expect_shapes`:
    the only tensor shapes the receiver takes, checked before any payload is decoded (an ANS payload
    of a few bytes can claim 2**28 codes and cost seconds to decode)."""
    data = bytes(data)
    _need(data, _HEADER.size, "the header")
    magic, version, flags, coder_id, bits, n_tensors = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}: not an infocut frame")
    if version != VERSION:
        raise CodecError(f"unsupported frame version {version} (this decoder reads {VERSION})")
    pos = _HEADER.size
    ref_distance = 0
    if flags & FLAG_DELTA:
        _need(data, pos + 4, "the delta header")
        ref_distance = _U32.unpack_from(data, pos)[0]
        pos += 4
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
    if expect_shapes is not None and [tuple(s) for s in expect_shapes] != shapes:
        raise CodecError(f"wrong shape: frame carries {shapes}, expected {[tuple(s) for s in expect_shapes]}")
    coder = get_coder(coder_id)
    check_bits(bits)
    refs = None
    if flags & FLAG_DELTA:
        if flags & FLAG_KEY or ref_distance == 0:
            raise CodecError("a delta frame must not be a key frame and needs ref_distance >= 1")
        refs = reference(ref_distance) if reference is not None else None
        if refs is None:
            raise MissingReference(f"delta frame refers to the frame {ref_distance} back, which this decoder does not "
                                   "hold; the sender must send a key frame")
    kw = _coder_args(coder.NAME, n_tensors, models, refs)
    tensors = []
    for i, (dtype, shape, length) in enumerate(zip(dtypes, shapes, lengths)):
        if dtype != DTYPE_UINT8:
            raise CodecError(f"tensor {i} has unknown dtype code {dtype} (only 0 = uint8)")
        # Zeros aside too: numpy cannot even describe an empty array whose other dims multiply past intp.
        if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
            raise CodecError(f"tensor {i} shape {shape} has more than {MAX_ELEMENTS} elements (zero dims aside)")
        try:
            tensors.append(coder.decode(data[pos : pos + length], shape, bits, **kw[i]))
        except CodecError as e:
            raise CodecError(f"tensor {i}: {e}") from None
        pos += length
    return DecodedFrame(tensors=tensors, bits=bits, coder=coder.NAME, flags=flags, version=version,
                        ref_distance=ref_distance)
