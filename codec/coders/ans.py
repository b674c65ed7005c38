"""ANS (constriction's stack coder) against the artifact's integer tables: codes at their model's cost.

A key frame codes each channel against its marginal (the factorized bound), in position order.
A delta frame codes what changed since the reference frame, which the decoder holds: per channel,
the number of gap symbols (uniform), then the runs of unchanged codes between changed positions
(gap symbols, a final run up to the channel's end included), then, grouped by (channel, reference
code), each changed position's new code (codec/entropy_model.py: delta_tables). On a fixed camera
most codes repeat, and a repeated code costs no coder step: a delta frame takes a third of the
symbols a key frame takes. The payload is the coder's 32-bit words, little endian. Decoding is
refused unless it consumes the payload exactly and the runs add up to each channel's length.
"""

from __future__ import annotations

import weakref

import numpy as np

from codec.coders._common import check_codes, element_count, finish_decode
from codec.entropy_model import GAP_ESCAPE, PRECISION, EntropyModel, channel_rows
from codec.errors import CodecError
from codec.quantizer import check_bits

try:
    import constriction
except ImportError:  # pragma: no cover - a base dependency; the message says what to install
    constriction = None

NAME = "ans"
ID = 2
NEEDS_MODEL = True

ESCAPE_SHIFT = GAP_ESCAPE.bit_length() - 1
assert GAP_ESCAPE == 1 << ESCAPE_SHIFT, "runs are cut into escapes with shifts"
_MODELS: dict[int, tuple[weakref.ref, list]] = {}  # constriction models of a table, built once per table


def _categoricals(table: np.ndarray) -> list:
    """One constriction Categorical per row of an integer table, built once per table object. Tables are
    read-only (codec/entropy_model.py), so the object names its content: no hash of it on every frame."""
    if constriction is None:
        raise CodecError("the ans coder needs the 'constriction' package (pip install constriction)")
    if table.flags.writeable:
        raise CodecError("entropy tables must be read-only arrays (EntropyModel makes them so)")
    key = id(table)
    hit = _MODELS.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    rows = table.reshape(-1, table.shape[-1]).astype(np.float64) / float(1 << PRECISION)  # exact
    models = [constriction.stream.model.Categorical(r, perfect=False) for r in rows]
    _MODELS[key] = (weakref.ref(table, lambda _, k=key: _MODELS.pop(k, None)), models)
    return models


def _delta_models(model: EntropyModel) -> tuple[list, list]:
    """Constriction models of the delta tables: one per channel's gaps, one per (channel, reference code) (none
    at 1 bit: a changed code is the other one)."""
    gap, change = model.delta_tables
    return _categoricals(gap), _categoricals(change) if change.shape[-1] > 1 else []


def _check(model: EntropyModel, shape: tuple[int, ...]) -> tuple[int, int]:
    """(channels, positions per channel) of a frame of `shape` coded with `model`."""
    c = model.channels
    n = element_count(shape)
    if not ((len(shape) >= 2 and shape[0] == 1 and shape[1] == c) or (len(shape) >= 1 and shape[0] == c)):
        raise CodecError(f"shape {tuple(shape)} does not carry the model's {c} channels (axis 1, or 0 unbatched)")
    return c, n // c


def _reference(model: EntropyModel, ref: np.ndarray, c: int, n: int) -> np.ndarray:
    """The reference codes as flat uint8, checked against the frame and the delta tables."""
    if model.inter is None:
        raise CodecError("a delta frame needs an entropy model with an inter table")
    r = channel_rows(ref, c, np.uint8).reshape(-1)
    if r.size != c * n:
        raise CodecError(f"reference holds {r.size} codes, the frame {c * n}")
    s = model.inter.shape[1]
    if r.size and int(r.max()) >= s:
        raise CodecError(f"reference holds code {int(r.max())}, the inter table has {s} rows")
    return r


def _by_reference(chan: np.ndarray, refs: np.ndarray, c: int, s: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The changes (in position order, so their channels `chan` ascend; `refs` their reference codes p) grouped
    by (channel k, p) for coding: (a stable permutation that sorts them by p; (g = k * s + p, start, end) of each
    nonempty group, g ascending, a group being the slice [start, end) of the sorted changes, in position order).
    Sorting on p alone is one radix pass over bytes where (k, p) would take two over 16-bit numbers; the
    groups still come out whole, in the order they are coded."""
    order = np.argsort(refs, kind="stable")
    counts = np.bincount(chan * s + refs, minlength=c * s).reshape(c, s)
    per_code = counts.sum(0)
    before = np.cumsum(per_code) - per_code  # changes of smaller reference codes, per p
    starts = np.cumsum(counts, 0) - counts + before  # then those of channels before k with the same p
    g = np.flatnonzero(counts)
    begin = starts.reshape(-1)[g]
    return order, list(zip(g.tolist(), begin.tolist(), (begin + counts.reshape(-1)[g]).tolist()))


def _delta_runs(flat: np.ndarray, r: np.ndarray, c: int, n: int) -> tuple[np.ndarray, ...]:
    """(the flat positions whose code differs from the reference's, their channels, gap symbols, gap symbols
    per channel).

    Each channel's run of unchanged codes before each change, and after its last (a change at position n
    that is not one); a run of g codes is g // GAP_ESCAPE escapes then g % GAP_ESCAPE. Laid out as c rows of
    n + 1 with the last column always set, the changes and each channel's end come out of one flatnonzero,
    already interleaved in coding order: one diff gives every run."""
    marks = np.ones((c, n + 1), bool)
    np.not_equal(flat.reshape(c, n), r.reshape(c, n), out=marks[:, :n])
    ext = np.flatnonzero(marks)
    gaps = np.empty_like(ext)  # np.diff(ext, prepend=-1) - 1, without diff's slow prepend
    gaps[:1] = ext[:1]
    np.subtract(ext[1:], ext[:-1], out=gaps[1:])
    gaps[1:] -= 1
    ends = np.searchsorted(ext, np.arange(1, c + 1) * (n + 1))  # past each channel's end mark
    per_run = ends.copy()
    per_run[1:] -= ends[:-1]
    changes = np.ones(len(ext), bool)
    changes[ends - 1] = False
    chan = np.repeat(np.arange(c), per_run - 1)  # a channel's runs: its changes + 1
    pos = ext[changes] - chan
    big = np.flatnonzero(gaps >= GAP_ESCAPE)  # few: most runs are short
    symbols = (gaps & (GAP_ESCAPE - 1)).astype(np.int32)
    if not big.size:
        return pos, chan, symbols, per_run
    escapes = gaps[big] >> ESCAPE_SHIFT
    symbols = np.insert(symbols, np.repeat(big, escapes), GAP_ESCAPE)
    channel = np.searchsorted(ends, big, side="right")
    return pos, chan, symbols, per_run + np.bincount(channel, weights=escapes, minlength=c).astype(per_run.dtype)


def _count_digits(most: int) -> list[int]:
    """Sizes of the uniform digits a count in 0..most is coded with, most significant first (constriction's
    uniform model takes at most 2**24 values)."""
    sizes = []
    while most >= 1 << 24:
        sizes.append(1 << 12)
        most >>= 12
    return [most + 1, *sizes]


def _encode_counts(coder, counts: np.ndarray, most: int) -> None:
    sizes = _count_digits(most)
    for i, size in enumerate(reversed(sizes)):  # least significant pushed first, popped last
        coder.encode_reverse(((counts >> (12 * i)) % size).astype(np.int32), constriction.stream.model.Uniform(size))


def _decode_counts(coder, c: int, most: int) -> np.ndarray:
    counts = np.zeros(c, np.int64)
    for size in _count_digits(most):
        counts = (counts << 12) + coder.decode(constriction.stream.model.Uniform(size), c)
    if c and (int(counts.min()) < 1 or int(counts.max()) > most):
        raise CodecError("ans payload: a channel's run count is out of range")
    return counts


def _changes(symbols: np.ndarray, per_channel: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of _delta_runs: (the changed flat positions, their channels), or CodecError when the runs do
    not add up."""
    c = len(per_channel)
    escape = symbols == GAP_ESCAPE
    ext = np.cumsum(np.where(escape, GAP_ESCAPE, symbols + 1)) - 1
    last = np.cumsum(per_channel) - 1
    if escape[last].any() or (ext[last] != np.arange(c) * (n + 1) + n).any():
        raise CodecError("ans payload: the runs do not add up to the channels' length")
    escape[last] = True  # each channel's end is not a change
    ext = ext[~escape]
    chan = ext // (n + 1)
    return ext - chan, chan


def encode(codes: np.ndarray, bits: int, model: EntropyModel | None = None, ref: np.ndarray | None = None) -> bytes:
    flat = check_codes(codes, bits)
    if model is None:
        raise CodecError("the ans coder needs the artifact's entropy model")
    if model.bits != bits:
        raise CodecError(f"entropy model is for {model.bits} bits, codes are {bits}")
    c, n = _check(model, codes.shape)
    coder = constriction.stream.stack.AnsCoder()
    if ref is None:
        symbols, models = flat.astype(np.int32), _categoricals(model.intra)
        for k in range(c - 1, -1, -1) if n else ():  # a stack: the last pushed is the first popped
            coder.encode_reverse(symbols[k * n:(k + 1) * n], models[k])
        return coder.get_compressed().astype("<u4").tobytes()
    r = _reference(model, ref, c, n)
    s = 1 << bits
    pos, chan, symbols, per_channel = _delta_runs(flat, r, c, n)
    gap_models, change_models = _delta_models(model)
    if s > 2:  # at 1 bit a changed code is the other one
        both = np.multiply(r, s, dtype=np.uint8 if bits <= 4 else np.uint16)  # (reference, new code): one gather
        both |= flat
        both = both.take(pos, mode="clip")  # in range by construction: no check per index
        new, old = both & (s - 1), both >> bits
        order, groups = _by_reference(chan, old, c, s)
        values = (new - (new > old)).astype(np.int32).take(order, mode="clip")
        for g, a, b in reversed(groups):  # a stack: the last group first
            coder.encode_reverse(values[a:b], change_models[g])
    ends = np.concatenate(([0], np.cumsum(per_channel))).tolist()
    for k in range(c - 1, -1, -1):
        coder.encode_reverse(symbols[ends[k]:ends[k + 1]], gap_models[k])
    _encode_counts(coder, per_channel, n + 1)
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
    c, n = _check(model, tuple(shape))
    r = None if ref is None else _reference(model, ref, c, n)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        out = _decode_key(coder, model, c, n) if r is None else _decode_delta(coder, model, r, c, n)
        complete = coder.is_empty()
    except CodecError:
        raise
    except (ValueError, RuntimeError, OverflowError) as e:
        raise CodecError(f"ans payload does not decode ({e})") from None
    except BaseException as e:  # a panic inside the Rust coder: still just a bad frame
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise CodecError(f"ans payload does not decode ({type(e).__name__}: {e})") from None
    if not complete:
        raise CodecError("ans payload holds more data than the frame's codes")
    return finish_decode(out, shape, bits, NAME)


def _decode_key(coder, model: EntropyModel, c: int, n: int) -> np.ndarray:
    models = _categoricals(model.intra)
    out = np.empty(c * n, np.uint8)
    for k in range(c) if n else ():
        out[k * n:(k + 1) * n] = coder.decode(models[k], n)
    return out


def _decode_delta(coder, model: EntropyModel, r: np.ndarray, c: int, n: int) -> np.ndarray:
    gap_models, change_models = _delta_models(model)
    per_channel = _decode_counts(coder, c, n + 1)
    symbols = np.concatenate([coder.decode(gap_models[k], int(per_channel[k])) for k in range(c)])
    s = 1 << model.bits
    pos, chan = _changes(symbols, per_channel, n)
    out = r.copy()
    old = r.take(pos)
    if s == 2:
        out[pos] = 1 - old
        return out
    order, groups = _by_reference(chan, old, c, s)
    grouped = np.empty(len(pos), np.int64)
    for g, a, b in groups:
        grouped[a:b] = coder.decode(change_models[g], b - a)
    values = np.empty_like(grouped)
    values[order] = grouped
    out[pos] = values + (values >= old)
    return out


def ideal_bits(codes: np.ndarray, model: EntropyModel, ref: np.ndarray | None = None) -> float:
    """-log2 P of the symbols this coder codes for `codes` (a delta frame: given `ref`): its ideal size."""
    if ref is None:
        return model.cost_bits(codes)
    flat = np.asarray(codes).reshape(-1)
    c, n = _check(model, np.shape(codes))
    r = _reference(model, ref, c, n)
    pos, chan, symbols, per_channel = _delta_runs(flat, r, c, n)
    gap, change = model.delta_tables
    freq = [gap[np.repeat(np.arange(c), per_channel), symbols]]
    if model.bits > 1:
        new, old = flat[pos].astype(np.int64), r[pos].astype(np.int64)
        freq.append(change[chan, old, new - (new > old)])
    counts_bits = c * float(np.log2(np.prod(_count_digits(n + 1), dtype=np.float64)))
    return counts_bits + float(sum(PRECISION * f.size - np.log2(f).sum() for f in freq))
