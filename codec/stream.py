"""A camera's coded stream over time: key frames and delta frames, on the sending and receiving side.

The sender codes each frame against the previous one it coded (a delta frame), with a key frame
at least every `key_interval` frames, on its first frame and whenever asked (a reconnect, or the
receiver saying it lacks a reference). The receiver keeps each camera's last decoded codes, which
a delta frame names by seq distance; it refuses one whose reference it does not hold, never
guesses. Keeping that reference durable with the frame's result (cloud/store.py) is what lets a
restarted receiver go on decoding a stream whose frames were already in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import zstandard

from codec.entropy_model import EntropyModel
from codec.errors import CodecError
from codec.framing import FLAG_KEY, encode_frame

Codes = list[np.ndarray]


class StreamEncoder:
    """The sending side of one camera's stream (one encode thread; request_key from any thread)."""

    def __init__(self, bits: int, coder: str, models: Sequence[EntropyModel] | None = None, key_interval: int = 1):
        self.bits, self.coder, self.models = bits, coder, models
        self.key_interval = int(key_interval)
        self.temporal = bool(models) and all(m.inter is not None for m in models) and self.key_interval > 1
        self._ref: Codes | None = None
        self._ref_seq = -1
        self._since_key = 0
        self._key_requested = threading.Event()
        self.key_frames = self.delta_frames = 0

    def request_key(self) -> None:
        """Make the next frame a key frame (after a reconnect, or when the receiver lacks a reference)."""
        self._key_requested.set()

    def encode(self, codes: Codes, seq: int) -> bytes:
        if (self.temporal and self._ref is not None and seq > self._ref_seq and self._since_key < self.key_interval
                and not self._key_requested.is_set()):
            data = encode_frame(codes, self.bits, self.coder, models=self.models, refs=self._ref,
                                ref_distance=seq - self._ref_seq)
            self._since_key += 1
            self.delta_frames += 1
        else:
            self._key_requested.clear()
            data = encode_frame(codes, self.bits, self.coder, flags=FLAG_KEY, models=self.models)
            self._since_key = 1
            self.key_frames += 1
        if self.temporal:
            self._ref, self._ref_seq = [np.array(c, copy=True) for c in codes], seq
        return data


class References:
    """The receiving side: each camera's last decoded codes, the reference of its next delta frame.
    `load(camera_id)`: the durable (seq, codes) to fall back on after a restart, or None."""

    def __init__(self, load: Callable[[str], tuple[int, Codes] | None] | None = None) -> None:
        self._last: dict[str, tuple[int, Codes]] = {}
        self._load = load

    def lookup(self, camera_id: str, seq: int) -> Callable[[int], Codes | None]:
        """What decode_frame asks: the codes `distance` seqs before `seq`, when held."""

        def reference(distance: int) -> Codes | None:
            held = self._last.get(camera_id)
            if held is None and self._load is not None:
                held = self._load(camera_id)
                if held is not None:
                    self._last[camera_id] = held
            return held[1] if held is not None and held[0] == seq - distance else None

        return reference

    def update(self, camera_id: str, seq: int, codes: Codes) -> None:
        held = self._last.get(camera_id)
        if held is None or seq > held[0]:
            self._last[camera_id] = (seq, codes)


def pack_codes(codes: Codes) -> bytes:
    """A frame's codes as compact bytes (zstd of the concatenation) for durable storage."""
    return zstandard.ZstdCompressor(level=1).compress(b"".join(np.ascontiguousarray(c).tobytes() for c in codes))


def unpack_codes(data: bytes, shapes: Sequence[tuple[int, ...]]) -> Codes:
    sizes = [int(np.prod(s)) for s in shapes]
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=sum(sizes))
    except zstandard.ZstdError as e:
        raise CodecError(f"stored reference does not decode ({e})") from None
    if len(raw) != sum(sizes):
        raise CodecError(f"stored reference holds {len(raw)} codes, the cut needs {sum(sizes)}")
    out, pos = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        out.append(np.frombuffer(raw, np.uint8, n, pos).reshape(s).copy())
        pos += n
    return out
