"""AnyGPT: the public façade. Owns the model (encoder, LLM, projectors) and the decoders.

    model = AnyGPT.from_preset("tiny")
    r = model.chat("draw a red circle", image="cat.png", audio="dog.wav")
    r.save("out/")

`chat` walks numbered steps, as diffusers' pipelines do: check inputs, encode media,
generate with the LLM, project signal tokens, decode. Decoders load lazily, the first
time their modality is asked for, and stay loaded until `unload_decoder`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file
from transformers import TextStreamer

from decoders.errors import DecoderError
from encoders import CheckpointError, ImageBindConfig, ImageBindEncoder, InputLimits, MediaError

from anygpt.config import (INPUT_MODALITIES, OUTPUT_MODALITIES, AnyGPTConfig, DecoderSettings, EncoderSettings,
                           preset, resolve_path, shipped_tiny)
from anygpt.errors import ConfigError, InputError, first_line
from anygpt.llm import load_llm
from anygpt.model import AnyGPTModel, Turn
from anygpt.response import Response, Trace

if TYPE_CHECKING:
    from decoders import Decoder

WEIGHTS_FILE = "anygpt.safetensors"


class ChatOptions(BaseModel):
    """Per-request options; None means the config's default."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None  # tokens the LLM chooses: a run of signal tokens counts as one
    temperature: float | None = None
    seed: int = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    outputs: tuple[str, ...] = OUTPUT_MODALITIES  # output modalities the reply may contain
    force: tuple[str, ...] = ()  # output modalities to make even if the LLM does not ask (test/UI hook)
    height: int | None = None
    width: int | None = None
    audio_length_in_s: float | None = None
    num_frames: int | None = None


@contextmanager
def part_errors(what: str, *, loading: bool) -> Iterator[None]:
    """The one mapping of the parts' own errors onto AnyGPT's, at the façade's boundary: past it every
    error is an AnyGPTError with a one-line message. A checkpoint or folder that a part cannot load
    (`loading`) is a ConfigError; input that a part refuses is an InputError. `what` names the part."""
    try:
        yield
    except (CheckpointError, DecoderError, MediaError) as e:
        raise (ConfigError if loading else InputError)(f"{what}: {first_line(e)}" if what else first_line(e)) from None


def build_encoder(settings: EncoderSettings) -> ImageBindEncoder:
    """ImageBind from an official .pth, a saved folder, or (tiny, no checkpoint) built in code."""
    if settings.checkpoint:
        path = resolve_path(settings.checkpoint)
        with part_errors("encoder", loading=True):
            if path.is_dir():  # shipped weights may be stored in half precision; compute in float32 on CPU
                return ImageBindEncoder.from_pretrained(path, dtype=torch.float32)
            config = ImageBindConfig.huge() if settings.kind == "huge" else ImageBindConfig.tiny()
            return ImageBindEncoder.from_checkpoint(path, config)
    if settings.kind == "huge":
        raise ConfigError("encoder kind 'huge' needs a checkpoint path (imagebind_huge.pth)")
    return ImageBindEncoder.tiny(seed=settings.seed)


def build_decoder(modality: str, settings: DecoderSettings, device: str = "cpu") -> Decoder:
    """A decoder from its local diffusers folder, or (no path) the tiny one built in code; its
    conditioning must match what the config (and so the output projector) says."""
    from decoders import DECODERS  # diffusers is imported with the first decoder, not at start-up

    cls = DECODERS[modality]
    with part_errors(f"{modality} decoder", loading=True):
        if settings.path:
            dec = cls.from_pretrained(resolve_path(settings.path), torch_dtype=settings.dtype, device=device,
                                      cpu_offload=device == "cuda", model_id=settings.model_id)
        else:
            dec = cls.tiny(seed=settings.seed)
    if tuple(dec.conditioning.shape) != tuple(settings.conditioning):
        raise ConfigError(f"{modality} decoder takes conditioning {tuple(dec.conditioning.shape)} but the "
                          f"config (and its output projector) says {tuple(settings.conditioning)}")
    return dec


class AnyGPT:
    def __init__(self, model: AnyGPTModel, config: AnyGPTConfig, trained: bool = False, device: str = "cpu"):
        self.model = model.eval()
        self.config = config
        lim = config.limits  # the encoder enforces the media limits, from file headers where it can
        model.encoder.limits = InputLimits(max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels,
                                           max_audio_seconds=lim.max_audio_seconds,
                                           max_video_seconds=lim.max_video_seconds,
                                           max_video_frames=lim.max_video_frames)
        self.trained = trained  # False: projectors and signal rows are random (never present output as a result)
        self.device = device
        self._decoders: dict[str, Decoder] = {}
        self._decoder_lock = threading.Lock()
        self.content_filter: Callable[[str], str | None] | None = None
        if config.safety.enabled:
            self.content_filter = KeywordFilter(config.safety.blocked_words)

    def set_content_filter(self, check: Callable[[str], str | None] | None) -> None:
        """A filter on prompts and replies: `check(text)` returns why the text is refused, or None.
        Prompts it refuses raise InputError; replies it refuses are withheld (words and media)."""
        self.content_filter = check

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, preset: str = "tiny", config: AnyGPTConfig | str | os.PathLike | None = None,
             weights: str | os.PathLike | None = None, *, paths: dict[str, str] | None = None,
             **kwargs) -> "AnyGPT":
        """What the applications load: a save_pretrained folder (`weights`), else a config (an
        AnyGPTConfig or its file), else a named preset with the local `paths` of its parts."""
        if weights:
            return cls.from_pretrained(weights, **kwargs)
        if config:
            return cls.from_config(config, **kwargs)
        return cls.from_preset(preset, paths=paths, **kwargs)

    @classmethod
    def from_preset(cls, name: str = "tiny", *, paths: dict[str, str] | None = None, **kwargs) -> "AnyGPT":
        """A named preset (`paths`: the local path of each part it needs, see config.PRESET_PATHS);
        `tiny` comes with its trained LLM side when the package ships it."""
        shipped = shipped_tiny("model") if name == "tiny" else None
        if shipped is not None:
            return cls.from_pretrained(resolve_path(shipped), **kwargs)
        return cls.from_config(preset(name, paths), **kwargs)

    @classmethod
    def from_config(cls, config: AnyGPTConfig | str | os.PathLike, *, weights: str | os.PathLike | None = None,
                    device: str = "cpu") -> "AnyGPT":
        """Build every part a config names; `weights` is a folder written by `save_pretrained`."""
        if not isinstance(config, AnyGPTConfig):
            config = AnyGPTConfig.load(config)
        encoder = build_encoder(config.encoder)  # first: a broken checkpoint fails before the LLM loads
        llm, tokenizer = load_llm(config.llm)
        with torch.random.fork_rng():  # untrained parts start the same on every build
            torch.manual_seed(0)
            model = AnyGPTModel(config, llm, tokenizer, encoder, init_new_rows=weights is None)
        if weights is not None:
            _load_weights(model, Path(weights))
        return cls(model, config, trained=weights is not None, device=device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs) -> "AnyGPT":
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"not an AnyGPT folder (no config.json): {folder}")
        config = AnyGPTConfig.parse(json.loads((folder / "config.json").read_text()), source=str(folder / "config.json"))
        return cls.from_config(config, weights=folder, **kwargs)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json (with references to the frozen parts) + anygpt.safetensors (+ lora/ when enabled)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / "config.json")
        metadata = {"signal_tokens": json.dumps(self.model.signal.tokens), "base_vocab": str(self.model.base_vocab)}
        save_file(self.model.trainable_state(), folder / WEIGHTS_FILE, metadata=metadata)
        if self.config.lora.enabled:
            self.model.llm.save_pretrained(folder / "lora", save_embedding_layers=False)

    # -- decoders -----------------------------------------------------------------------------
    def decoder(self, modality: str) -> Decoder:
        """The decoder of an output modality, loaded on first use (once, even under concurrent requests)."""
        with self._decoder_lock:
            if modality not in self._decoders:
                self._decoders[modality] = build_decoder(modality, self.config.decoders[modality], self.device)
            return self._decoders[modality]

    @property
    def loaded_decoders(self) -> list[str]:
        return list(self._decoders)

    def unload_decoder(self, modality: str) -> None:
        self._decoders.pop(modality, None)

    # -- the request --------------------------------------------------------------------------
    def chat(self, prompt: str, *, image: Any = None, audio: Any = None, video: Any = None, depth: Any = None,
             thermal: Any = None, imu: Any = None, media: Sequence[tuple[str, Any]] | None = None,
             history: Sequence[Turn] | None = None, options: ChatOptions | None = None,
             on_text: Callable[[str], None] | None = None, **option_kwargs) -> Response:
        """Answer one user turn. Media come as keyword arguments (one item or a list each) or as an
        ordered `media=[(modality, item), ...]`; options as a ChatOptions or keyword arguments.
        `on_text(piece)` is called with the reply's words as the LLM writes them (signal tokens left out)."""
        request = ChatRequest(prompt, media=_collect_media(
            dict(image=image, audio=audio, video=video, depth=depth, thermal=thermal, imu=imu), media),
            history=list(history or []), options=self._options(options, option_kwargs))
        return self.chat_batch([request], on_text=on_text)[0]

    def chat_batch(self, requests: Sequence["ChatRequest"], on_text: Callable[[str], None] | None = None
                   ) -> list[Response]:
        """Answer several independent requests. Greedy requests that agree on their generation
        settings share one LLM `generate` call, and the artifacts of one modality are decoded
        together, in one pipeline call, across all the requests (what scripted generation batches)."""
        plans = [self._prepare(r) for r in requests]
        self._write(plans, on_text)
        # 5. decode: all artifacts of a modality (across requests) in one pipeline call per options set
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for p, plan in enumerate(plans):
            for i, run in enumerate(plan.runs):
                groups.setdefault((run.modality, _decode_key(plan.options)), []).append((p, i))
        for (modality, _), members in groups.items():
            t = time.perf_counter()
            opts = plans[members[0][0]].options
            made = self._decode(modality, torch.stack([plans[p].conditioning[i] for p, i in members]),
                                [plans[p].options.seed + i for p, i in members], opts)
            spent = time.perf_counter() - t
            for (p, i), artifact in zip(members, made):
                plans[p].artifacts[i] = artifact
            for p in {p for p, _ in members}:
                plans[p].trace.timings[f"decode_{modality}"] = spent
        return [self._response(plan) for plan in plans]

    def conditioning_batch(self, requests: Sequence["ChatRequest"]) -> list[list[tuple[str, torch.Tensor]]]:
        """Steps 1-4 of `chat_batch` without decoding: per request, (modality, prompt_embeds [tokens, dim])
        of each run of signal tokens, in reply order: exactly what the decoders would receive. The
        collapse check of `anygpt eval --part llm` reads it, so it needs no diffusion run."""
        plans = [self._prepare(r) for r in requests]
        self._write(plans, None)
        return [[(run.modality, c) for run, c in zip(plan.runs, plan.conditioning)] for plan in plans]

    def _prepare(self, request: "ChatRequest") -> "_Plan":
        """Steps 1-2 of a request: check inputs, encode media into the prompt's embeddings."""
        # 1. check inputs
        opts = request.options if isinstance(request.options, ChatOptions) else self._options(None, request.options)
        items = _collect_media({}, request.media)
        prompt = request.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: say what you want")
        limits = self.config.limits
        if len(prompt) > limits.max_prompt_chars:
            raise InputError(f"the prompt is {len(prompt)} characters, over the limit of {limits.max_prompt_chars}")
        if self.content_filter is not None and (reason := self.content_filter(prompt)):
            raise InputError(f"the prompt was refused by the content filter: {reason}")
        turns = list(request.history) + [Turn("user", prompt, items)]
        n_media = sum(len(t.media) for t in turns)
        if n_media > limits.max_media_items:
            raise InputError(f"{n_media} media items in the conversation, over the limit of {limits.max_media_items}")
        trace = Trace(seed=opts.seed, model_ids=self.model_ids())

        # 2. encode media (every turn's; the encoder caches by content, so earlier turns cost nothing)
        with torch.inference_mode():
            t = time.perf_counter()
            with part_errors("", loading=False):
                inputs_embeds = self.model.prepare_inputs_labels([turns]).inputs_embeds
            trace.timings["encode"] = time.perf_counter() - t
        return _Plan(opts, turns, trace, inputs_embeds)

    def _write(self, plans: list["_Plan"], on_text: Callable[[str], None] | None) -> None:
        """Steps 3-4: the LLM writes each reply, then the hidden states at each run of signal tokens
        become the decoder's prompt_embeds. Greedy requests with the same length limit and outputs
        share one generate call; sampled or streamed ones go alone (their own seed, their own stream)."""
        self.model.merge_lora()
        groups: dict[tuple, list[_Plan]] = {}
        for n, plan in enumerate(plans):
            o = plan.options
            temperature = self.config.temperature if o.temperature is None else o.temperature
            shared = temperature == 0 and on_text is None
            key = (o.max_new_tokens or self.config.max_new_tokens, temperature, tuple(sorted(o.outputs)),
                   tuple(sorted(o.force)), None if shared else n)
            groups.setdefault(key, []).append(plan)
        for (max_new_tokens, temperature, outputs, force, _), members in groups.items():
            with torch.inference_mode():
                # 3. the LLM writes text and signal tokens
                t = time.perf_counter()
                replies = self.model.generate_batch(
                    [plan.inputs_embeds for plan in members], max_new_tokens=max_new_tokens, temperature=temperature,
                    seed=members[0].options.seed, allowed=set(outputs), force=set(force),
                    streamer=_TextCallback(self.model.tokenizer, on_text) if on_text else None)
                spent = time.perf_counter() - t
                # 4. hidden states at each run of signal tokens -> the decoder's prompt_embeds
                for plan, reply in zip(members, replies):
                    plan.trace.timings["llm"] = spent
                    plan.trace.generated_tokens = reply.generated
                    t = time.perf_counter()
                    plan.reply_ids, plan.runs = reply.ids, self.model.find_runs(reply.ids)
                    plan.conditioning = self.model.signal_conditioning(plan.turns, reply.ids, plan.runs, reply.hidden)
                    plan.artifacts = [None] * len(plan.runs)
                    plan.trace.timings["project"] = time.perf_counter() - t

    def _response(self, plan: "_Plan") -> Response:
        tokens = self.model.tokenizer.convert_ids_to_tokens
        for i, run in enumerate(plan.runs):
            plan.trace.signal_runs.append({"modality": run.modality,
                                           "tokens": tokens([plan.reply_ids[p] for p in run.positions]),
                                           "seed": plan.options.seed + i})
        plan.trace.raw_reply = self.model.tokenizer.decode(plan.reply_ids, skip_special_tokens=False)
        history_out = plan.turns + [Turn("assistant", plan.trace.raw_reply)]
        text, artifacts = self.model.reply_text(plan.reply_ids), plan.artifacts
        if self.content_filter is not None and (reason := self.content_filter(text)):
            text, artifacts = f"[reply withheld by the content filter: {reason}]", []
            plan.trace.signal_runs = []
        return Response(text=text, artifacts=artifacts, trace=plan.trace, history=history_out)

    def model_ids(self) -> dict[str, str]:
        ids = {"llm": self.config.llm.describe(),
               "encoder": self.config.encoder.checkpoint or f"imagebind-{self.config.encoder.kind}"}
        for m, d in self.config.decoders.items():
            ids[m] = d.model_id or d.path or f"tiny-{m}"
        return ids

    def _decode(self, modality: str, prompt_embeds: torch.Tensor, seeds: list[int], opts: ChatOptions) -> list:
        settings = self.config.decoders[modality]
        size = settings.size_options(height=opts.height, width=opts.width, audio_length_in_s=opts.audio_length_in_s,
                                     num_frames=opts.num_frames)
        dec = self.decoder(modality)
        with part_errors(f"{modality} decoder", loading=False):
            return dec.decode(prompt_embeds, seeds=seeds,
                              num_inference_steps=opts.num_inference_steps or settings.num_inference_steps,
                              guidance_scale=settings.guidance_scale if opts.guidance_scale is None
                              else opts.guidance_scale, **size)

    def _options(self, options: ChatOptions | None, overrides: dict) -> ChatOptions:
        try:
            opts = ChatOptions.model_validate({**(options.model_dump() if options else {}), **overrides})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise InputError(f"bad chat options: {problems}") from None
        limits = self.config.limits
        for name, value, limit in (("max_new_tokens", opts.max_new_tokens, limits.max_new_tokens),
                                   ("num_inference_steps", opts.num_inference_steps, limits.max_steps)):
            if value is not None and not 1 <= value <= limit:
                raise InputError(f"{name} must be from 1 to {limit} (the config's limit), got {value}")
        for field in ("outputs", "force"):
            unknown = [m for m in getattr(opts, field) if m not in OUTPUT_MODALITIES]
            if unknown:
                raise InputError(f"unknown output modality {unknown} in {field}; known: {list(OUTPUT_MODALITIES)}")
            missing = [m for m in getattr(opts, field) if m not in self.config.decoders]
            if missing:
                raise InputError(f"this model has no decoder for {missing}")
        return opts


@dataclass
class ChatRequest:
    """One request of `chat_batch`: a prompt, its media as (modality, item) pairs, the earlier turns,
    and its options (a ChatOptions or a dict of them)."""

    prompt: str
    media: Sequence[tuple[str, Any]] = ()
    history: Sequence[Turn] = ()
    options: ChatOptions | dict = field(default_factory=dict)


@dataclass
class _Plan:
    """A request on its way: prepared (steps 1-2), then written and projected (3-4), then decoded (5)."""

    options: ChatOptions
    turns: list[Turn]
    trace: Trace
    inputs_embeds: torch.Tensor
    reply_ids: list[int] = field(default_factory=list)
    runs: list = field(default_factory=list)
    conditioning: list[torch.Tensor] = field(default_factory=list)
    artifacts: list = field(default_factory=list)


def _decode_key(opts: ChatOptions) -> tuple:
    """Artifacts decode together only when every decoding option is the same."""
    return (opts.num_inference_steps, opts.guidance_scale, opts.height, opts.width, opts.audio_length_in_s,
            opts.num_frames)


class KeywordFilter:
    """The default content filter: refuses text containing any of its words (whole words, any case)."""

    def __init__(self, words: Sequence[str]):
        import re

        self.words = [w for w in words if w.strip()]
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in self.words) + r")\b", re.IGNORECASE) \
            if self.words else None

    def __call__(self, text: str) -> str | None:
        match = self._pattern.search(text) if self._pattern else None
        return f"it contains the blocked word {match.group(0)!r}" if match else None


class _TextCallback(TextStreamer):
    """transformers' TextStreamer, handing each finished piece of text to a callback instead of stdout."""

    def __init__(self, tokenizer: Any, callback: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.callback = callback

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.callback(text)


def _collect_media(by_name: dict[str, Any], ordered: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for modality, value in by_name.items():
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            items.append((modality, item))
    for pair in ordered or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise InputError(f"media items are (modality, item) pairs, got {pair!r}")
        items.append(tuple(pair))
    for modality, item in items:
        if modality not in INPUT_MODALITIES:
            raise InputError(f"unknown input modality {modality!r}; known: {list(INPUT_MODALITIES)}")
        if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
            raise InputError(f"{modality} file not found: {item}")
    return items


def _load_weights(model: AnyGPTModel, folder: Path) -> None:
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise ConfigError(f"no trained weights in {folder} (expected {WEIGHTS_FILE})")
    state = _read_safetensors(file)
    expected = set(model.trainable_state())
    if set(state) != expected:
        raise ConfigError(f"{file} does not match this config: missing {sorted(expected - set(state))[:5]}, "
                          f"unexpected {sorted(set(state) - expected)[:5]}")
    model.load_trainable_state(state)
    if model.config.lora.enabled:
        from peft import set_peft_model_state_dict

        lora_file = folder / "lora" / "adapter_model.safetensors"
        if not lora_file.is_file():
            raise ConfigError(f"config enables LoRA but {lora_file} is missing")
        set_peft_model_state_dict(model.llm, _read_safetensors(lora_file))


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except Exception as e:  # safetensors' own error type: a truncated or foreign file
        raise ConfigError(f"{file} is not a readable safetensors file: {first_line(e)}") from None
