"""Errors of the encoders package.

`MediaError` is the one error a caller has to catch for bad input: whatever went
wrong inside a decoder (PIL, libsndfile, FFmpeg, torch) comes out as a MediaError
whose message names the input and the problem.
"""


class MediaError(ValueError):
    """Bad input: unreadable or truncated file, wrong modality for the file, empty
    audio, a video with no frames, an input over the limits, an unknown modality."""


class CheckpointError(ValueError):
    """An ImageBind checkpoint that is missing, unreadable, or does not fit the config."""
