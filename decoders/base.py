"""The decoder interface: a diffusers pipeline behind "what conditioning do you take" and "decode".

A decoder owns one pipeline (Stable Diffusion, AudioLDM, TextToVideoSD). It takes conditioning
embeddings made elsewhere (the output projectors) as `prompt_embeds` and never runs its text
encoder on a prompt: the text encoder is used only for the unconditional "" embedding (the
classifier-free-guidance negative, computed once and cached) and for `encode_text`, which gives
the training targets for the projectors.

`decode` walks numbered steps as diffusers' pipelines do: check inputs, pick the negative,
run the pipeline once for the whole batch, wrap the outputs as artifacts with provenance.
The modality files (image.py, audio.py, video.py) add only what differs: the pipeline class,
where the conditioning shape lives in its config, the tiny build, the size options and the
conversion of the pipeline output.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from decoders.errors import ConditioningError, DecoderError
from decoders.frozen_text import FrozenTextEncoder

if TYPE_CHECKING:
    from decoders.media import Artifact

__all__ = ["Conditioning", "ConditioningError", "Decoder", "DecoderError", "SCHEDULERS"]

# Schedulers every pipeline here accepts (diffusers' Karras-compatible set), by short name.
SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}

# Sizes above this many times a model's native size are refused: the models were not trained for
# them and the memory they take grows with the square of the side.
MAX_SIZE_FACTOR = 4

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Conditioning:
    """The shape of one artifact's `prompt_embeds`: [tokens, dim] (77×768 for SD v1.5)."""

    tokens: int
    dim: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.tokens, self.dim)


class Decoder(ABC):
    """One output modality: a diffusers pipeline that turns conditioning embeddings into media."""

    modality: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    # Extra `from_pretrained` arguments: components a checkpoint lists but this decoder does not load.
    load_kwargs: ClassVar[dict[str, Any]] = {}
    # Short names of the schedulers this decoder may switch to (see `set_scheduler`).
    scheduler_names: ClassVar[tuple[str, ...]] = tuple(SCHEDULERS)

    def __init__(self, pipeline: DiffusionPipeline, model_id: str = "custom",
                 frozen_text: FrozenTextEncoder | None = None):
        if not isinstance(pipeline, self.pipeline_class):
            raise DecoderError(f"the {self.modality} decoder wraps a {self.pipeline_class.__name__}, "
                               f"got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.model_id = model_id
        # Set when the text encoder is a frozen one from a package, named (not carried) by the folder.
        self.frozen_text = frozen_text
        self._unconditional: torch.Tensor | None = None
        pipeline.set_progress_bar_config(disable=True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_id={self.model_id!r}, conditioning={self.conditioning.shape}, "
                f"scheduler={self.scheduler!r})")

    # -- what the decoder takes (read from the loaded pipeline's configs) ----------------------
    @property
    @abstractmethod
    def conditioning(self) -> Conditioning:
        """The [tokens, dim] of one artifact's prompt_embeds, as the loaded checkpoint defines it."""

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, torch_dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", cpu_offload: bool = False,
                        model_id: str | None = None) -> "Decoder":
        """Load a local diffusers-format folder (model_index.json + one folder per component).

        Never downloads. `cpu_offload` on a CUDA device keeps each model on the CPU until it runs
        (`enable_model_cpu_offload`); on the CPU it changes nothing. `model_id` (recorded in every
        artifact's provenance) defaults to the folder name.
        """
        path = Path(path)
        frozen = FrozenTextEncoder.read(path)
        cls._check_folder(path, skip=("text_encoder", "tokenizer") if frozen else ())
        dtype = _dtype(torch_dtype)
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DecoderError(f"device {device} asked for, but CUDA is not available")
        components = {}
        if frozen is not None:  # the pretrained text encoder comes from its package, shared and in float32
            components["tokenizer"], components["text_encoder"] = frozen.load()
        try:
            pipeline = cls.pipeline_class.from_pretrained(path, torch_dtype=dtype, local_files_only=True,
                                                          **cls.load_kwargs, **components)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise DecoderError(f"cannot load the {cls.modality} pipeline from {path}: {e}") from e
        if cpu_offload and device.type == "cuda":
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
        return cls(pipeline, model_id=model_id or path.name, frozen_text=frozen)

    @classmethod
    def _check_folder(cls, path: Path, skip: tuple[str, ...] = ()) -> None:
        """Clear errors for the usual broken checkpoints: no folder, another pipeline, missing parts."""
        if not path.is_dir():
            raise DecoderError(f"{cls.modality} decoder folder not found: {path}")
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise DecoderError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        try:
            index = json.loads(index_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DecoderError(f"{index_file} is not valid JSON: {e}") from None
        expected = cls.pipeline_class.__name__
        if index.get("_class_name") != expected:
            raise DecoderError(f"{path} holds a {index.get('_class_name')}, but the {cls.modality} decoder "
                               f"needs a {expected}")
        missing = [name for name, spec in index.items()
                   if not name.startswith("_") and isinstance(spec, list) and spec and spec[0] is not None
                   and name not in cls.load_kwargs and name not in skip and not (path / name).is_dir()]
        if missing:
            raise DecoderError(f"{path} lists components without their folders: {', '.join(missing)}")

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> "Decoder":
        """A small pipeline of the real classes with random weights, built in code; the same `seed`
        gives the same weights. `overrides` are the keyword options of `_tiny_pipeline` (sizes), plus
        `model_id`."""
        model_id = overrides.pop("model_id", f"tiny-{cls.modality}")
        _check_options(cls._tiny_pipeline, overrides, f"the tiny {cls.modality} decoder")
        frozen = FrozenTextEncoder() if overrides.get("text_encoder") == "minilm" else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipeline = cls._tiny_pipeline(**overrides)
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()  # freshly built transformers models start in training mode (dropout on)
        return cls(pipeline, model_id=model_id, frozen_text=frozen)

    @classmethod
    @abstractmethod
    def _tiny_pipeline(cls, **options: Any) -> DiffusionPipeline:
        """Build the tiny pipeline (the random state is already seeded)."""

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a diffusers-format folder that `from_pretrained` loads (diffusers itself too, given the
        frozen text encoder as a component when the folder only names it)."""
        self.pipeline.save_pretrained(path, safe_serialization=True)
        if self.frozen_text is not None:  # named by the pointer file, not carried
            for name in ("text_encoder", "tokenizer"):
                shutil.rmtree(Path(path) / name, ignore_errors=True)
            self.frozen_text.save(Path(path))

    def to(self, device: str | torch.device, dtype: torch.dtype | str | None = None) -> "Decoder":
        dtype = _dtype(dtype)
        if dtype is None:
            self.pipeline.to(device)
        else:
            self.pipeline.to(device, dtype)
        self._unconditional = None
        return self

    # -- scheduler choice ----------------------------------------------------------------------
    @property
    def scheduler(self) -> str:
        """The pipeline's scheduler class name."""
        return type(self.pipeline.scheduler).__name__

    def set_scheduler(self, name: str) -> None:
        """Switch the sampler (keeping the checkpoint's noise schedule): one of `scheduler_names`."""
        if name not in self.scheduler_names:
            raise DecoderError(f"unknown scheduler {name!r} for the {self.modality} decoder; "
                               f"choose one of {list(self.scheduler_names)}")
        config = self.pipeline.scheduler.config
        if config.get("rescale_betas_zero_snr") and not self._keeps_zero_snr(name):
            # it would drop the rescale and sample a schedule the UNet was not trained on
            raise DecoderError(f"scheduler {name!r} cannot keep this {self.modality} decoder's zero-terminal-SNR "
                               "noise schedule; choose one of "
                               f"{[n for n in self.scheduler_names if self._keeps_zero_snr(n)]}")
        self.pipeline.scheduler = SCHEDULERS[name].from_config(config)

    @staticmethod
    def _keeps_zero_snr(name: str) -> bool:
        return "rescale_betas_zero_snr" in inspect.signature(SCHEDULERS[name].__init__).parameters

    # -- text encoder: only for the negative and for training targets --------------------------
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """The pipeline's own text encoding of `texts`, [len(texts), tokens, dim] — exactly what it
        would condition on for those prompts (the target the output projectors learn)."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise DecoderError(f"encode_text takes a non-empty list of strings, got {texts!r}")
        embeds = self._encode_text(list(texts))
        return embeds.reshape(len(texts), *self.conditioning.shape)

    @torch.no_grad()
    def text_mask(self, texts: Sequence[str]) -> torch.Tensor:
        """Which positions of `encode_text(texts)` hold the caption's real tokens, [len(texts), tokens]
        (bool). The rest is padding, the same for every caption: a loss that counts it rewards a
        constant output."""
        tokenizer = self.pipeline.tokenizer
        tokens = self.conditioning.tokens
        mask = tokenizer(list(texts), padding="max_length", max_length=tokens, truncation=True,
                         return_tensors="pt").attention_mask
        return mask[:, :tokens].bool()

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        """SD-family pipelines (CLIP text encoder): last hidden states, [B, tokens, dim]."""
        embeds, _ = self.pipeline.encode_prompt(texts, self.pipeline._execution_device, 1, False)
        return embeds

    def unconditional_embeds(self) -> torch.Tensor:
        """The encoding of "" ([tokens, dim]): the negative of classifier-free guidance. Cached."""
        if self._unconditional is None:
            self._unconditional = self.encode_text([""])[0]
        return self._unconditional

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, prompt_embeds: torch.Tensor, *, negative_prompt_embeds: torch.Tensor | None = None,
               seeds: Sequence[int], num_inference_steps: int, guidance_scale: float,
               **size_options: Any) -> list[Artifact]:
        """One artifact per row of `prompt_embeds` ([B, tokens, dim], or [tokens, dim] for one),
        all made in one pipeline call; `seeds[i]` seeds artifact i. `size_options` are the modality's
        (image: height, width; audio: audio_length_in_s; video: num_frames, height, width, fps)."""
        # 1. check inputs
        embeds = self._check_embeds(prompt_embeds, "prompt_embeds")
        batch = embeds.shape[0]
        seeds = _check_seeds(seeds, batch)
        steps = self._check_steps(num_inference_steps)
        guidance = _check_guidance(guidance_scale)
        _check_options(self._size_kwargs, size_options, f"the {self.modality} decoder's size options")
        call_size, meta_size = self._size_kwargs(**size_options)
        negative = None if negative_prompt_embeds is None else self._check_negative(negative_prompt_embeds, batch)

        # 2. the negative, used only with guidance: the caller's, else the pipeline's own "" encoding
        if guidance <= 1.0:
            negative = None
        elif negative is None:
            negative = self.unconditional_embeds().expand(batch, *self.conditioning.shape)

        # 3. one pipeline call for the whole batch; CPU generators make seeds device-independent
        device, dtype = self.pipeline._execution_device, self.pipeline.unet.dtype
        output = self.pipeline(
            prompt_embeds=self._pipeline_embeds(embeds.to(device, dtype)),
            negative_prompt_embeds=None if negative is None else self._pipeline_embeds(negative.to(device, dtype)),
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="np",
            **call_size,
        )

        # 4. artifacts with provenance
        metas = [{"modality": self.modality, "model_id": self.model_id, "seed": seed,
                  "conditioning_sha256": conditioning_sha256(row), "num_inference_steps": steps,
                  "guidance_scale": guidance, "scheduler": self.scheduler, **meta_size}
                 for seed, row in zip(seeds, embeds)]
        return self._artifacts(output, metas)

    def _pipeline_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """[B, tokens, dim] -> the layout the pipeline's `prompt_embeds` argument takes."""
        return embeds

    @abstractmethod
    def _size_kwargs(self, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate the size options: (keyword arguments for the pipeline, values for the meta)."""

    @abstractmethod
    def _artifacts(self, output: Any, metas: list[dict]) -> list[Artifact]:
        """The pipeline output (output_type="np") as one artifact per row."""

    # -- checks shared by the modalities -------------------------------------------------------
    def _check_embeds(self, embeds: Any, name: str) -> torch.Tensor:
        expected = self.conditioning.shape
        if not isinstance(embeds, torch.Tensor):
            raise DecoderError(f"{name} must be a torch.Tensor of shape [batch, {expected[0]}, {expected[1]}], "
                               f"got {type(embeds).__name__}")
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(0)
        if embeds.dim() != 3 or tuple(embeds.shape[1:]) != expected or embeds.shape[0] == 0:
            raise ConditioningError(
                f"{name} must have shape [batch, {expected[0]}, {expected[1]}] (or [{expected[0]}, {expected[1]}] "
                f"for one artifact) for the {self.modality} decoder {self.model_id!r}; got {list(embeds.shape)}")
        if not embeds.is_floating_point():
            raise DecoderError(f"{name} must be floating point, got {embeds.dtype}")
        if not torch.isfinite(embeds).all():
            raise DecoderError(f"{name} contains NaN or infinite values")
        return embeds.detach()

    def _check_negative(self, embeds: Any, batch: int) -> torch.Tensor:
        """One negative row for all artifacts, or one per artifact: [batch, tokens, dim]."""
        negative = self._check_embeds(embeds, "negative_prompt_embeds")
        if negative.shape[0] not in (1, batch):
            raise ConditioningError(f"negative_prompt_embeds has {negative.shape[0]} rows for "
                                    f"{batch} prompt_embeds rows (give 1 or {batch})")
        return negative.expand(batch, *self.conditioning.shape)

    def _check_steps(self, steps: Any) -> int:
        most = int(self.pipeline.scheduler.config.num_train_timesteps)
        if not is_int(steps) or not 1 <= steps <= most:
            raise DecoderError(f"num_inference_steps must be an int from 1 to {most}, got {steps!r}")
        return int(steps)

    def _native_side(self) -> int:
        """The UNet's training size in pixels (in mel frames for audio): its latent size times the
        VAE's downscale (512 for SD v1.5)."""
        return int(self.pipeline.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def _check_side(self, name: str, value: Any) -> int:
        """A height or width: the native size when None; else a multiple of the VAE's downscale (and of
        the 8 that the diffusers pipelines check for), at most MAX_SIZE_FACTOR times the native size."""
        if value is None:
            return self._native_side()
        multiple, most = math.lcm(8, int(self.pipeline.vae_scale_factor)), MAX_SIZE_FACTOR * self._native_side()
        if not is_int(value) or value <= 0 or value % multiple or value > most:
            raise DecoderError(f"{name} must be a positive multiple of {multiple} (this model's VAE scale), "
                               f"at most {most}; got {value!r}")
        return int(value)


def text_conditioning(pipeline: DiffusionPipeline) -> Conditioning:
    """SD-family pipelines (SD, ZeroScope) condition on the CLIP text encoder's last hidden states:
    the tokenizer's length (capped by the encoder's positions) by the UNet's cross-attention width."""
    tokens = min(int(pipeline.tokenizer.model_max_length), int(pipeline.text_encoder.config.max_position_embeddings))
    return Conditioning(tokens=tokens, dim=int(pipeline.unet.config.cross_attention_dim))


def conditioning_sha256(row: torch.Tensor) -> str:
    """sha256 of one artifact's conditioning, as float32 little-endian bytes in C order."""
    data = row.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return hashlib.sha256(data.tobytes()).hexdigest()


def is_int(value: Any) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_options(function: Any, options: dict, what: str) -> None:
    """A DecoderError naming the known keywords, rather than a TypeError, for unknown options."""
    known = list(inspect.signature(function).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DecoderError(f"unknown option(s) {unknown} for {what}; known: {known}")


def _check_seeds(seeds: Any, batch: int) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise DecoderError(f"seeds must be a sequence of {batch} ints (one per artifact), got {seeds!r}")
    seeds = list(seeds)
    if len(seeds) != batch:
        raise DecoderError(f"got {len(seeds)} seeds for {batch} artifacts (one seed per artifact)")
    for s in seeds:
        if not is_int(s) or not 0 <= s < 2**63:
            raise DecoderError(f"seeds must be ints in [0, 2**63), got {s!r}")
    return [int(s) for s in seeds]


def _check_guidance(scale: Any) -> float:
    if not is_number(scale) or not math.isfinite(scale) or scale < 0:
        raise DecoderError(f"guidance_scale must be a finite number >= 0 (<= 1 turns guidance off), got {scale!r}")
    return float(scale)


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in _DTYPES:
        raise DecoderError(f"unknown dtype {value!r}; use one of {list(_DTYPES)} or a torch.dtype")
    return _DTYPES[value]
