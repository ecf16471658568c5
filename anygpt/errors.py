"""The project's error types: every bad input ends in one of these, with a message naming the problem."""


class AnyGPTError(Exception):
    """Base class of every error AnyGPT raises on purpose."""


class InputError(AnyGPTError, ValueError):
    """A request the caller can fix: missing file, unreadable media, empty prompt, unknown modality, ..."""


class ConfigError(AnyGPTError, ValueError):
    """A config file, preset or checkpoint folder that cannot be used as given."""
