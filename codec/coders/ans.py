"""ANS (constriction's stack coder) against the artifact's integer tables: codes at their model's cost.

A key frame codes each channel against its marginal (the factorized bound); a delta frame codes each
code against the row chosen by the same position's code in the reference frame. Symbols go in
channel order, within a channel in position order (delta frames: grouped by the reference code, a
grouping the decoder recomputes from the reference it holds). The payload is the coder's 32-bit
words, little endian. Decoding is refused unless it consumes the payload exactly.
"""

from __future__ import annotations

import hashlib

import numpy as np

from codec.coders._common import check_codes, element_count, finish_decode
from codec.entropy_model import PRECISION, EntropyModel, channel_rows
from codec.errors import CodecError
from codec.quantizer import check_bits

try:
    import constriction
except ImportError:  # pragma: no cover - a base dependency; the message says what to install
    constriction = None

NAME = "ans"
ID = 2
NEEDS_MODEL = True

_MODELS: dict[tuple, list] = {}  # constriction models of a table, built once per process


def _categoricals(table: np.ndarray) -> list:
    """One constriction Categorical per row of an integer table (cached by content)."""
    if constriction is None:
        raise CodecError("the ans coder needs the 'constriction' package (pip install constriction)")
    key = (table.shape, hashlib.sha1(table.tobytes()).digest())
    models = _MODELS.get(key)
    if models is None:
        rows = table.reshape(-1, table.shape[-1]).astype(np.float64) / float(1 << PRECISION)  # exact
        models = [constriction.stream.model.Categorical(r, perfect=False) for r in rows]
        if len(_MODELS) > 64:
            _MODELS.clear()
        _MODELS[key] = models
    return models


def _plan(model: EntropyModel, ref: np.ndarray | None, shape: tuple[int, ...]):
    """(models, order, bounds): the symbols go in `order` (positions into the flat codes; None: as they are),
    cut into groups at `bounds`, group k coded against models[k]. Key frames: one group per channel against
    its marginal. Delta frames: one per (channel, reference code), positions in order within a group."""
    c = model.channels
    n = element_count(shape)
    if not ((len(shape) >= 2 and shape[0] == 1 and shape[1] == c) or (len(shape) >= 1 and shape[0] == c)):
        raise CodecError(f"shape {tuple(shape)} does not carry the model's {c} channels (axis 1, or 0 unbatched)")
    if ref is None:
        return _categoricals(model.intra), None, np.arange(c + 1) * (n // c)
    if model.inter is None:
        raise CodecError("a delta frame needs an entropy model with an inter table")
    r = channel_rows(ref, c, np.uint8)
    if r.size != n:
        raise CodecError(f"reference holds {r.size} codes, the frame {n}")
    s = model.inter.shape[1]
    if r.size and int(r.max()) >= s:
        raise CodecError(f"reference holds code {int(r.max())}, the inter table has {s} rows")
    # a stable sort of each channel's reference codes: numpy's radix sort on 8 bits (4x faster than one sort
    # of 16-bit (channel, code) keys)
    order = np.argsort(r, axis=1, kind="stable")
    order = (order + np.arange(c, dtype=np.intp)[:, None] * r.shape[1]).reshape(-1)
    counts = np.bincount((np.arange(c, dtype=np.intp)[:, None] * s + r).reshape(-1), minlength=c * s)
    return _categoricals(model.inter), order, np.concatenate(([0], np.cumsum(counts)))


def encode(codes: np.ndarray, bits: int, model: EntropyModel | None = None, ref: np.ndarray | None = None) -> bytes:
    flat = check_codes(codes, bits)
    if model is None:
        raise CodecError("the ans coder needs the artifact's entropy model")
    if model.bits != bits:
        raise CodecError(f"entropy model is for {model.bits} bits, codes are {bits}")
    models, order, bounds = _plan(model, ref, codes.shape)
    symbols = (flat if order is None else flat[order]).astype(np.int32)  # grouped: each group a contiguous slice
    coder = constriction.stream.stack.AnsCoder()
    for k in range(len(bounds) - 2, -1, -1):  # a stack: the last pushed is the first popped
        if bounds[k + 1] > bounds[k]:
            coder.encode_reverse(symbols[bounds[k]:bounds[k + 1]], models[k])
    return coder.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, shape: tuple, bits: int, model: EntropyModel | None = None,
           ref: np.ndarray | None = None) -> np.ndarray:
    bits = check_bits(bits)
    if model is None:
        raise CodecError("the ans coder needs the artifact's entropy model")
    if model.bits != bits:
        raise CodecError(f"frame coded at {bits} bits, the entropy model is for {model.bits}")
    if len(payload) % 4:
        raise CodecError(f"ans payload is {len(payload)} bytes, not a whole number of 32-bit words")
    models, order, bounds = _plan(model, ref, tuple(shape))
    symbols = np.empty(int(bounds[-1]), np.uint8)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        for k in range(len(bounds) - 1):
            if bounds[k + 1] > bounds[k]:
                symbols[bounds[k]:bounds[k + 1]] = coder.decode(models[k], int(bounds[k + 1] - bounds[k]))
        complete = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as e:
        raise CodecError(f"ans payload does not decode ({e})") from None
    except BaseException as e:  # a panic inside the Rust coder: still just a bad frame
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise CodecError(f"ans payload does not decode ({type(e).__name__}: {e})") from None
    if not complete:
        raise CodecError("ans payload holds more data than the frame's codes")
    out = symbols
    if order is not None:
        out = np.empty_like(symbols)
        out[order] = symbols
    return finish_decode(out, shape, bits, NAME)
