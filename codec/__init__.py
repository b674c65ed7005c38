"""Codec shared by edge and cloud: quantizer reference math, entropy coders, frame format (numpy only)."""

from __future__ import annotations

from codec.coders import get_coder
from codec.errors import CodecError
from codec.framing import DecodedFrame, decode_frame, encode_frame
from codec.quantizer import QuantParams, calibrate, dequantize, quantize

__all__ = [
    "CodecError",
    "DecodedFrame",
    "QuantParams",
    "calibrate",
    "decode_frame",
    "dequantize",
    "encode_frame",
    "get_coder",
    "quantize",
]
