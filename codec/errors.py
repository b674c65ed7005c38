"""The one exception the codec raises for bad input, so callers can reject a frame alone."""

from __future__ import annotations


class CodecError(ValueError):
    """Invalid, truncated or corrupted codec input; the message says what is wrong."""


class MissingReference(CodecError):
    """A delta frame whose reference frame the decoder does not hold (lost, or the decoder restarted)."""
