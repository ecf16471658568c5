"""AnyGPT: any-to-any multimodal generation in the style of NExT-GPT.

Names are imported on first use, so `import anygpt.config` (the CLI's --help, config
checks) does not pay for torch, transformers and diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "AnyGPT": "anygpt.pipeline", "ChatOptions": "anygpt.pipeline", "ChatRequest": "anygpt.pipeline",
    "AnyGPTConfig": "anygpt.config",
    "AnyGPTError": "anygpt.errors", "ConfigError": "anygpt.errors", "InputError": "anygpt.errors",
    "Turn": "anygpt.model",
    "Response": "anygpt.response", "Trace": "anygpt.response",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'anygpt' has no attribute {name!r}")
