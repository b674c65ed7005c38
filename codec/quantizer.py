"""Reference math of the cut-tensor quantizer (asymmetric affine, per tensor or per channel).

The ONNX head ends in the same ops in the same order (Div, Round half-to-even, Add, Clip, Cast),
all in float32, so the codes computed here and on the edge agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from codec.errors import CodecError

MAX_BITS = 8  # codes travel as uint8


def check_bits(bits: Any) -> int:
    """bits as an int, refusing anything outside 1..MAX_BITS."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise CodecError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


@dataclass(frozen=True)
class QuantParams:
    """Quantizer parameters; `scale`/`zero_point` are read-only float32 arrays of shape (C,) or ()."""

    bits: int
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None

    def __post_init__(self) -> None:
        bits = check_bits(self.bits)
        scale = np.array(self.scale, dtype=np.float32)
        zp = np.array(self.zero_point, dtype=np.float32)
        zp += np.float32(0.0)  # -0.0 -> 0.0, so equal params hash and serialize alike
        if self.axis is None:
            if scale.shape != () or zp.shape != ():
                raise CodecError(
                    f"per-tensor params need scalar scale and zero_point, got shapes {scale.shape}, {zp.shape}"
                )
        else:
            if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)) or self.axis < 0:
                raise CodecError(f"axis must be a non-negative int or None, got {self.axis!r}")
            if scale.ndim != 1 or scale.shape != zp.shape or scale.size == 0:
                raise CodecError(
                    f"per-channel params need scale and zero_point of equal shape (C,), "
                    f"got {scale.shape}, {zp.shape}"
                )
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise CodecError("scale must be finite and > 0")
        qmax = 2**bits - 1
        if not (np.all(np.isfinite(zp)) and np.all(zp == np.round(zp)) and np.all((zp >= 0) & (zp <= qmax))):
            raise CodecError(f"zero_point must be integers in 0..{qmax}")
        scale.flags.writeable = False
        zp.flags.writeable = False
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "axis", None if self.axis is None else int(self.axis))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash((self.bits, self.axis, self.scale.tobytes(), self.zero_point.tobytes()))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def to_json(self) -> dict:
        """Plain JSON types; float32 -> Python float is exact, so from_json restores identical params."""
        return {
            "bits": self.bits,
            "axis": self.axis,
            "scale": self.scale.tolist(),
            "zero_point": [int(z) for z in self.zero_point.ravel()] if self.axis is not None
            else int(self.zero_point),
        }

    @classmethod
    def from_json(cls, d: dict) -> QuantParams:
        try:
            return cls(bits=d["bits"], scale=d["scale"], zero_point=d["zero_point"], axis=d["axis"])
        except CodecError:
            raise
        except KeyError as e:
            raise CodecError(f"quantizer params missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CodecError(f"quantizer params malformed: {e}") from None

    def _broadcast(self, ndim: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """scale and zero_point shaped to broadcast along `axis` of a tensor of this shape."""
        if self.axis is None:
            return self.scale, self.zero_point
        if self.axis >= ndim or shape[self.axis] != self.scale.shape[0]:
            raise CodecError(
                f"tensor of shape {shape} does not have {self.scale.shape[0]} channels on axis {self.axis}"
            )
        bshape = [1] * ndim
        bshape[self.axis] = self.scale.shape[0]
        return self.scale.reshape(bshape), self.zero_point.reshape(bshape)


def calibrate(
    samples: np.ndarray, bits: int, per_channel: bool = True, percentile: float = 100.0
) -> QuantParams:
    """Fit asymmetric affine params on (N,C,H,W) samples; channel axis is 1.

    The range [lo, hi] is the (100-p, p) percentile pair (min/max for p=100), widened to include 0
    so that 0 is exactly representable (ReLU zeros and padding dequantize to exact 0).
    """
    bits = check_bits(bits)
    x = np.asarray(samples, dtype=np.float32)
    if not 50.0 < percentile <= 100.0:
        raise CodecError(f"percentile must be in (50, 100], got {percentile}")
    if x.size == 0:
        raise CodecError("cannot calibrate on empty samples")
    if not np.all(np.isfinite(x)):
        raise CodecError("calibration samples contain NaN or inf")
    if per_channel:
        if x.ndim < 2:
            raise CodecError(f"per-channel calibration needs samples with a channel axis 1, got shape {x.shape}")
        flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    else:
        flat = x.reshape(1, -1)
    if percentile == 100.0:
        lo, hi = flat.min(axis=1), flat.max(axis=1)
    else:
        lo, hi = np.percentile(flat, [100.0 - percentile, percentile], axis=1)
    lo = np.minimum(lo, 0.0).astype(np.float64)
    hi = np.maximum(hi, 0.0).astype(np.float64)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).astype(np.float32)
    scale = np.where(np.isfinite(scale) & (scale > np.finfo(np.float32).tiny), scale, np.float32(1.0))
    zp = np.clip(np.round(-lo / scale.astype(np.float64)), 0, qmax).astype(np.float32)
    if per_channel:
        return QuantParams(bits=bits, scale=scale, zero_point=zp, axis=1)
    return QuantParams(bits=bits, scale=scale[0], zero_point=zp[0], axis=None)


def quantize(x: np.ndarray, p: QuantParams) -> np.ndarray:
    """Codes in 0..2**bits-1 as uint8: clip(round(x / scale) + zp, 0, qmax), all in float32."""
    xf = np.asarray(x, dtype=np.float32)
    if np.isnan(xf).any():
        raise CodecError("cannot quantize a tensor containing NaN")
    scale, zp = p._broadcast(xf.ndim, xf.shape)
    return np.clip(np.round(xf / scale) + zp, 0, p.qmax).astype(np.uint8)


def dequantize(codes: np.ndarray, p: QuantParams) -> np.ndarray:
    """float32 reconstruction (codes - zp) * scale, the first op of the tail."""
    c = np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer):
        raise CodecError(f"codes must be integers, got dtype {c.dtype}")
    scale, zp = p._broadcast(c.ndim, c.shape)
    return (c.astype(np.float32) - zp) * scale
