"""The project's error types: every bad input ends in one of these, with a message naming the problem."""


class AnyGPTError(Exception):
    """Base class of every error AnyGPT raises on purpose."""


class InputError(AnyGPTError, ValueError):
    """A request the caller can fix: missing file, unreadable media, empty prompt, unknown modality, ..."""


class ConfigError(AnyGPTError, ValueError):
    """A config file, preset or checkpoint folder that cannot be used as given."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's error may run to a page), or its type's name."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
