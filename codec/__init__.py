"""Codec shared by edge and cloud: quantizer reference math, entropy coders, frame format (numpy only)."""

from __future__ import annotations

from codec.coders import get_coder, needs_model
from codec.entropy_model import EntropyModel
from codec.errors import CodecError, MissingReference
from codec.framing import DecodedFrame, decode_frame, encode_frame
from codec.quantizer import QuantParams, calibrate, dequantize, quantize

__all__ = [
    "CodecError",
    "DecodedFrame",
    "EntropyModel",
    "MissingReference",
    "QuantParams",
    "calibrate",
    "decode_frame",
    "dequantize",
    "encode_frame",
    "get_coder",
    "needs_model",
    "quantize",
]
