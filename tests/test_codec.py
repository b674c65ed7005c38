"""codec: coders round-trip exactly, the quantizer keeps its error bound, and frames refuse any damage."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from codec import (
    CodecError,
    DecodedFrame,
    QuantParams,
    calibrate,
    decode_frame,
    dequantize,
    encode_frame,
    framing,
    get_coder,
    quantize,
)

CODERS = ["raw", "zstd"]
FAST = settings(max_examples=60, deadline=None)


@st.composite
def codes_and_bits(draw, max_side: int = 9, min_side: int = 0):
    bits = draw(st.integers(2, 8))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=min_side, max_side=max_side))
    codes = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 2**bits - 1)))
    return codes, bits


def recrc(frame: bytes) -> bytes:
    """The frame with its CRC recomputed, to reach the checks that come after the CRC."""
    body = frame[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def sample_frame(coder: str) -> bytes:
    rng = np.random.default_rng(7)
    tensors = [rng.integers(0, 8, (2, 3, 5), dtype=np.uint8), rng.integers(0, 8, (4,), dtype=np.uint8)]
    return encode_frame(tensors, bits=3, coder=coder, flags=framing.FLAG_KEY)


# ---------------------------------------------------------------- coders


@pytest.mark.parametrize("name", CODERS)
@FAST
@given(cb=codes_and_bits())
def test_coder_round_trip_is_exact(name, cb):
    codes, bits = cb
    coder = get_coder(name)
    out = coder.decode(coder.encode(codes, bits), codes.shape, bits)
    assert out.dtype == np.uint8 and out.shape == codes.shape
    np.testing.assert_array_equal(out, codes)


def test_raw_packs_to_exactly_bits_per_code():
    codes = np.arange(8, dtype=np.uint8)  # 0..7 at 3 bits, LSB first
    payload = get_coder("raw").encode(codes, 3)
    assert len(payload) == 3
    assert int.from_bytes(payload, "little") == sum(v << (3 * i) for i, v in enumerate(range(8)))
    assert len(get_coder("raw").encode(np.zeros(100_000, np.uint8), 5)) == 62_500


@pytest.mark.parametrize("name", CODERS)
def test_encode_refuses_codes_wider_than_bits(name):
    with pytest.raises(CodecError, match="does not fit in 3 bits"):
        get_coder(name).encode(np.array([1, 8, 2], dtype=np.uint8), 3)
    with pytest.raises(CodecError, match="uint8"):
        get_coder(name).encode(np.array([1, 2], dtype=np.int32), 3)


@pytest.mark.parametrize("name", CODERS)
def test_decode_refuses_payload_for_another_shape(name):
    coder = get_coder(name)
    payload = coder.encode(np.ones((4, 5), np.uint8), 4)
    with pytest.raises(CodecError, match=r"shape \(5, 6\).* needs"):
        coder.decode(payload, (5, 6), 4)


def test_raw_refuses_nonzero_padding_bits():
    payload = bytearray(get_coder("raw").encode(np.array([1, 2, 3], np.uint8), 3))  # 9 bits in 2 bytes
    payload[-1] |= 0x80
    with pytest.raises(CodecError, match="padding"):
        get_coder("raw").decode(bytes(payload), (3,), 3)


def test_zstd_refuses_code_out_of_range():
    payload = zstandard.ZstdCompressor().compress(bytes([1, 9, 2]))
    with pytest.raises(CodecError, match="does not fit in 3 bits"):
        get_coder("zstd").decode(payload, (3,), 3)


def test_zstd_output_is_bounded_by_shape():
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 22))
    with pytest.raises(CodecError, match="declares 4194304 bytes"):
        get_coder("zstd").decode(bomb, (16,), 3)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 22))
    with pytest.raises(CodecError, match="does not decode to 16 bytes"):
        get_coder("zstd").decode(unsized, (16,), 3)
    with pytest.raises(CodecError, match="does not decode to 0 bytes"):
        get_coder("zstd").decode(unsized, (0,), 3)
    small = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(16))
    np.testing.assert_array_equal(get_coder("zstd").decode(small, (4, 4), 3), np.zeros((4, 4)))


def test_zstd_refuses_trailing_data_and_garbage():
    payload = get_coder("zstd").encode(np.zeros(16, np.uint8), 3)
    with pytest.raises(CodecError, match="zstd"):
        get_coder("zstd").decode(payload + b"\x00", (16,), 3)
    with pytest.raises(CodecError, match="no valid zstd frame header"):
        get_coder("zstd").decode(b"not zstd", (16,), 3)


def test_zstd_level_is_configurable():
    from codec.coders import zstd

    codes = np.tile(np.arange(8, dtype=np.uint8), 5000)
    assert zstd.LEVEL == 3
    fast, strong = zstd.encode(codes, 3, level=1), zstd.encode(codes, 3, level=19)
    for payload in (fast, strong):
        np.testing.assert_array_equal(zstd.decode(payload, codes.shape, 3), codes)


def test_registry_by_name_and_id():
    assert get_coder("raw").ID == 0 and get_coder(0).NAME == "raw"
    assert get_coder("zstd").ID == 1 and get_coder(1).NAME == "zstd"
    for bad in ("lzma", 9, True):
        with pytest.raises(CodecError, match="unknown coder"):
            get_coder(bad)


# ---------------------------------------------------------------- framing


@FAST
@given(
    tensors=st.lists(codes_and_bits(max_side=6), min_size=1, max_size=4),
    bits=st.integers(2, 8),
    coder=st.sampled_from(CODERS),
    flags=st.integers(0, 255).filter(lambda f: not f & framing.FLAG_DELTA),
)
def test_frame_round_trip_multi_tensor(tensors, bits, coder, flags):
    codes = [np.minimum(t, 2**bits - 1) for t, _ in tensors]
    frame = decode_frame(encode_frame(codes, bits=bits, coder=coder, flags=flags))
    assert isinstance(frame, DecodedFrame)
    assert (frame.bits, frame.coder, frame.flags, frame.version) == (bits, coder, flags, framing.VERSION)
    assert frame.key_frame == bool(flags & 1)
    assert len(frame.tensors) == len(codes)
    for got, want in zip(frame.tensors, codes):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_frame_layout_matches_spec():
    codes = np.arange(6, dtype=np.uint8).reshape(2, 3)
    frame = encode_frame([codes], bits=8, coder="raw", flags=1)
    header = b"IC" + bytes([framing.VERSION, 1, 0, 8, 1]) + bytes([0, 2]) + struct.pack("<III", 2, 3, 6)
    assert frame[: len(header)] == header
    assert frame[len(header) : len(header) + 6] == codes.tobytes()
    assert struct.unpack("<I", frame[-4:])[0] == zlib.crc32(frame[:-4])
    assert len(frame) == len(header) + 6 + 4


@pytest.mark.parametrize("coder", CODERS)
def test_every_truncation_is_refused(coder):
    frame = sample_frame(coder)
    for n in range(len(frame)):
        with pytest.raises(CodecError, match="truncated"):
            decode_frame(frame[:n])


def test_truncation_message_counts_payload_bytes():
    frame = encode_frame([np.zeros(1234, np.uint8)], bits=8, coder="raw")
    with pytest.raises(CodecError, match="header says 1234 payload bytes, 1200 present"):
        decode_frame(frame[: len(frame) - 4 - 34])
    with pytest.raises(CodecError, match="CRC32 missing"):
        decode_frame(frame[:-1])


def flip(frame: bytes, bit: int) -> bytes:
    damaged = bytearray(frame)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@pytest.mark.parametrize("coder", CODERS)
def test_every_single_bit_flip_is_refused(coder):
    frame = sample_frame(coder)
    for bit in range(8 * len(frame)):
        with pytest.raises(CodecError):
            decode_frame(flip(frame, bit))


LARGE = {c: encode_frame([np.random.default_rng(3).integers(0, 16, (8, 30, 40), dtype=np.uint8)] * 2,
                         bits=4, coder=c) for c in CODERS}


@settings(max_examples=200, deadline=None)
@given(coder=st.sampled_from(CODERS), where=st.floats(0, 1, exclude_max=True), extra=st.integers(0, 7))
def test_bit_flips_in_a_large_frame_are_refused(coder, where, extra):
    frame = LARGE[coder]
    with pytest.raises(CodecError):
        decode_frame(flip(frame, int(where * len(frame)) * 8 + extra))


@pytest.mark.parametrize("coder", CODERS)
@given(garbage=st.binary(min_size=1, max_size=64))
@settings(max_examples=30, deadline=None)
def test_trailing_garbage_is_refused(coder, garbage):
    with pytest.raises(CodecError, match="trailing bytes"):
        decode_frame(sample_frame(coder) + garbage)


def test_header_errors_say_what_is_wrong():
    frame = sample_frame("raw")
    with pytest.raises(CodecError, match="bad magic"):
        decode_frame(b"XX" + frame[2:])
    for old in (1, 3):  # 1: delta frames coded position by position, before runs
        with pytest.raises(CodecError, match=f"unsupported frame version {old}"):
            decode_frame(frame[:2] + bytes([old]) + frame[3:])
    with pytest.raises(CodecError, match="CRC32 mismatch: frame corrupted"):
        decode_frame(frame[:-1] + bytes([frame[-1] ^ 0xFF]))
    with pytest.raises(CodecError, match="unknown coder 7"):
        decode_frame(recrc(frame[:4] + b"\x07" + frame[5:]))
    with pytest.raises(CodecError, match="bits must be an integer in 1..8"):
        decode_frame(recrc(frame[:5] + b"\x09" + frame[6:]))
    with pytest.raises(CodecError, match="unknown dtype code 3"):
        decode_frame(recrc(frame[:7] + b"\x03" + frame[8:]))
    with pytest.raises(CodecError, match="no tensors"):
        decode_frame(recrc(frame[:6] + b"\x00" + bytes(4)))


def test_hostile_dims_with_valid_crc_are_refused_without_allocating():
    frame = encode_frame([np.zeros(16, np.uint8)], bits=3, coder="zstd")
    huge = recrc(frame[:9] + struct.pack("<I", 0xFFFFFFFF) + frame[13:])
    with pytest.raises(CodecError, match="more than"):
        decode_frame(huge)
    wrong = recrc(frame[:9] + struct.pack("<I", 1 << 20) + frame[13:])
    with pytest.raises(CodecError, match="tensor 0: zstd payload declares 16 bytes"):
        decode_frame(wrong)


@pytest.mark.parametrize("coder", CODERS)
def test_empty_tensor_with_huge_dims_is_a_codec_error(coder):
    """Found by tests/test_fuzz.py: 0 elements passed the size check, then numpy refused the shape itself."""
    frame = encode_frame([np.zeros((0, 1, 1), np.uint8)], bits=1, coder=coder)
    hostile = recrc(frame[:13] + struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF) + frame[21:])
    with pytest.raises(CodecError, match="more than"):
        decode_frame(hostile)


def test_encode_frame_refuses_bad_arguments():
    ok = np.zeros((2, 2), np.uint8)
    with pytest.raises(CodecError, match="1..255 tensors"):
        encode_frame([], bits=3, coder="raw")
    with pytest.raises(CodecError, match="uint8"):
        encode_frame([ok.astype(np.float32)], bits=3, coder="raw")
    with pytest.raises(CodecError, match="flags"):
        encode_frame([ok], bits=3, coder="raw", flags=256)
    with pytest.raises(CodecError, match="unknown coder"):
        encode_frame([ok], bits=3, coder="huffman")
    with pytest.raises(CodecError, match="bits"):
        encode_frame([ok], bits=9, coder="raw")


# ---------------------------------------------------------------- quantizer


@st.composite
def activations(draw):
    shape = draw(hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=5))
    mag = draw(st.sampled_from([1e-3, 1.0, 50.0, 1e4]))
    shift = draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0]))
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    return ((x + np.float32(shift)) * np.float32(mag)).astype(np.float32)


def _scale_of(p: QuantParams, ndim: int) -> np.ndarray:
    return p.scale if p.axis is None else p.scale.reshape([1, -1] + [1] * (ndim - 2))


@FAST
@given(x=activations(), bits=st.integers(2, 8), per_channel=st.booleans())
def test_quantization_error_is_at_most_half_a_step_in_range(x, bits, per_channel):
    p = calibrate(x, bits, per_channel=per_channel)
    assert p.axis == (1 if per_channel else None)
    assert p.scale.shape == ((x.shape[1],) if per_channel else ())
    codes = quantize(x, p)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert codes.max() <= 2**bits - 1
    err = np.abs(dequantize(codes, p) - x)
    assert np.all(err <= _scale_of(p, x.ndim) * 0.5 * (1 + 1e-4) + 1e-30)
    zero = dequantize(quantize(np.zeros_like(x), p), p)
    np.testing.assert_array_equal(zero, 0.0)  # 0 is always exactly representable


def test_quantize_is_the_exact_float32_formula():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    p = calibrate(x, 4)
    scale, zp = p.scale.reshape(1, 3, 1, 1), p.zero_point.reshape(1, 3, 1, 1)
    want = np.clip(np.round(x / scale) + zp, 0, 15).astype(np.uint8)
    np.testing.assert_array_equal(quantize(x, p), want)
    half = QuantParams(bits=4, scale=np.float32(1.0), zero_point=np.float32(0.0), axis=None)
    np.testing.assert_array_equal(quantize(np.array([0.5, 1.5, 2.5, -3.0, 99.0]), half), [0, 2, 2, 0, 15])
    np.testing.assert_array_equal(dequantize(np.array([0, 2, 15], np.uint8), half), [0.0, 2.0, 15.0])


def test_calibrate_range_always_includes_zero():
    positive = np.random.default_rng(1).uniform(2, 3, (4, 2, 3, 3)).astype(np.float32)
    p = calibrate(positive, 8)
    np.testing.assert_array_equal(p.zero_point, [0, 0])
    p = calibrate(-positive, 8)
    np.testing.assert_array_equal(p.zero_point, [255, 255])
    p = calibrate(np.zeros((2, 3, 2, 2), np.float32), 4, per_channel=False)
    assert p.scale > 0 and p.zero_point == 0


def test_calibrate_percentile_clips_outliers():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0] = 1e4
    full, clipped = calibrate(x, 4, percentile=100.0), calibrate(x, 4, percentile=99.9)
    assert full.scale[0] > 1e4 / 16 and clipped.scale[0] < 10 / 15
    np.testing.assert_allclose(full.scale[1:], clipped.scale[1:], rtol=0.5)
    codes = quantize(x, clipped)
    assert codes[0, 0, 0, 0] == 15 and dequantize(codes, clipped)[0, 0, 0, 0] < 10
    inside = np.abs(x) < 2.5
    assert np.mean(np.abs(dequantize(codes, clipped) - x)[inside]) < np.mean(
        np.abs(dequantize(quantize(x, full), full) - x)[inside]
    )


def test_quantizer_refuses_bad_input():
    p = calibrate(np.ones((1, 3, 2, 2), np.float32), 4)
    with pytest.raises(CodecError, match="3 channels on axis 1"):
        quantize(np.ones((1, 4, 2, 2), np.float32), p)
    with pytest.raises(CodecError, match="NaN"):
        quantize(np.full((1, 3, 2, 2), np.nan, np.float32), p)
    with pytest.raises(CodecError, match="NaN or inf"):
        calibrate(np.full((1, 3, 2, 2), np.inf, np.float32), 4)
    with pytest.raises(CodecError, match="percentile"):
        calibrate(np.ones((1, 3, 2, 2), np.float32), 4, percentile=101)
    with pytest.raises(CodecError, match="scale"):
        QuantParams(bits=4, scale=np.float32(0), zero_point=np.float32(0), axis=None)
    with pytest.raises(CodecError, match="zero_point"):
        QuantParams(bits=4, scale=np.float32(1), zero_point=np.float32(16), axis=None)
    with pytest.raises(CodecError, match="zero_point"):
        QuantParams(bits=4, scale=np.float32(1), zero_point=np.float32(1.5), axis=None)


@FAST
@given(x=activations(), bits=st.integers(2, 8), per_channel=st.booleans())
def test_quant_params_json_round_trip(x, bits, per_channel):
    p = calibrate(x, bits, per_channel=per_channel)
    back = QuantParams.from_json(json.loads(json.dumps(p.to_json())))
    assert back == p and hash(back) == hash(p)
    assert back.scale.dtype == np.float32 and back.scale.tobytes() == p.scale.tobytes()
    np.testing.assert_array_equal(quantize(x, back), quantize(x, p))


def test_quant_params_from_bad_json():
    with pytest.raises(CodecError, match="missing key 'scale'"):
        QuantParams.from_json({"bits": 4, "zero_point": 0, "axis": None})
    with pytest.raises(CodecError, match="malformed"):
        QuantParams.from_json({"bits": 4, "scale": "wide", "zero_point": 0, "axis": None})
    with pytest.raises(CodecError, match="bits"):
        QuantParams.from_json({"bits": 12, "scale": 1.0, "zero_point": 0, "axis": None})
