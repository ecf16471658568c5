"""The errors this package raises on bad input (re-exported by `decoders.base` and `decoders`)."""

from __future__ import annotations


class DecoderError(ValueError):
    """Bad input to a decoder, or a checkpoint folder it cannot use; the message names the problem."""


class ConditioningError(DecoderError):
    """`prompt_embeds` of the wrong shape; the message names the expected and the given shape."""
