"""ImageBind as AnyGPT's one encoder: config, checkpoint loading, cached encoding.

One embedding per input item, exactly what ImageBind's own forward returns (NExT-GPT
feeds these to its input projector): each clip is L2-normalised and then scaled by the
modality's postprocessor (image/video x1, audio x20, depth x5, thermal x10, imu x5,
text x its learnt logit scale), and audio/video average their clips, so norms differ by
modality on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from encoders._imagebind_import import BPE_PATH, ImageBindModel, SimpleTokenizer
from encoders.errors import CheckpointError, MediaError
from encoders.preprocess import AUDIO_PADS, PREPROCESSORS, InputLimits, Media, as_media

MODALITIES = ("image", "audio", "video", "depth", "thermal", "imu")
# Our names -> ImageBind's ModalityType keys. A video is the vision branch fed with clips.
MODEL_KEYS = {"image": "vision", "video": "vision", "audio": "audio", "depth": "depth",
              "thermal": "thermal", "imu": "imu", "text": "text"}

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class ImageBindConfig:
    """Every width and depth `ImageBindModel` takes. The defaults are imagebind_huge's."""

    out_embed_dim: int = 1024
    video_frames: int = 2
    # Seconds between the 2 frames of each video clip (ImageBind's data.py: 2). The tiny preset
    # looks 0.25 s apart: its toy clips last 1-2 s, so 2-s clips would all be the same first/last
    # frame pair, with the shape 80 px away and no local motion for the 2x14x14 patches to see.
    video_clip_duration: float = 2.0
    # How a sound shorter than its 2-s clip is filled (`load_and_transform_audio`): "fbank", data.py's
    # zero log-mel frames, or "silence", zeros in the waveform. The tiny preset takes silence: its toy
    # sounds last 1-2 s, and data.py's padding is as loud as white noise, which hides a noise burst's end.
    audio_pad: str = "fbank"
    kernel_size: tuple[int, int, int] = (2, 14, 14)
    audio_kernel_size: int = 16
    audio_stride: int = 10
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_drop_path: float = 0.1
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    depth_embed_dim: int = 384
    depth_kernel_size: int = 16
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_drop_path: float = 0.0
    thermal_embed_dim: int = 768
    thermal_kernel_size: int = 16
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_drop_path: float = 0.0
    imu_embed_dim: int = 512
    imu_kernel_size: int = 8
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7

    @classmethod
    def huge(cls) -> "ImageBindConfig":
        """imagebind_huge (the official imagebind_huge.pth): 1024-d embeddings."""
        return cls()

    @classmethod
    def tiny(cls) -> "ImageBindConfig":
        """The real architecture and input sizes with 64-wide, 1-2 block trunks (CPU preset)."""
        small = dict(embed_dim=64, num_heads=4)
        kw = {f"{m}_{k}": v for m in ("vision", "audio", "text", "depth", "thermal", "imu") for k, v in small.items()}
        return cls(out_embed_dim=64, video_clip_duration=0.25, audio_pad="silence", vision_num_blocks=2,
                   audio_num_blocks=2, text_num_blocks=2,
                   depth_num_blocks=1, thermal_num_blocks=1, imu_num_blocks=1, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kernel_size": list(self.kernel_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageBindConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type"})
        if unknown:
            raise CheckpointError(f"unknown ImageBind config keys: {unknown}")
        d = {k: v for k, v in d.items() if k in known}
        if "kernel_size" in d:
            d["kernel_size"] = tuple(d["kernel_size"])
        if d.get("audio_pad", "fbank") not in AUDIO_PADS:
            raise CheckpointError(f"ImageBind config audio_pad must be one of {AUDIO_PADS}, got {d['audio_pad']!r}")
        return cls(**d)


# Config fields that shape the preprocessing, not the network.
PREPROCESSING_FIELDS = ("video_clip_duration", "audio_pad")


def build_model(config: ImageBindConfig) -> ImageBindModel:
    kwargs = asdict(config)
    for name in PREPROCESSING_FIELDS:
        kwargs.pop(name)
    return ImageBindModel(**kwargs)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Put each parameter on the meta device as it is registered, so building imagebind_huge
    (1.2B parameters) for a checkpoint costs neither memory nor random init. (Building under
    `torch.device("meta")` fails: ImageBind's constructor calls `.item()` on a tensor.)"""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(bpe_path=str(BPE_PATH))  # CLIP's BPE, shipped in the imagebind package


def _as_list(items: Any) -> list[Any]:
    """A single item (path, bytes, image, array, tensor) is a batch of one."""
    single = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, np.ndarray, torch.Tensor, Media)
    return [items] if isinstance(items, single) else list(items)


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise MediaError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return modality


class ImageBindEncoder(torch.nn.Module):
    """ImageBind with its preprocessing, input limits and an embedding cache.

    `encode` is the inference entry point (cached by content hash, so the same picture
    in every turn of a chat is encoded once). `prepare` + `forward` are the same two
    steps without cache or inference mode, for training the tiny encoder.
    """

    batch_size = 8  # items per forward pass in `encode`

    def __init__(self, config: ImageBindConfig, model: ImageBindModel | None = None,
                 limits: InputLimits | None = None, cache_size: int = 256):
        super().__init__()
        self.config = config
        self.model = (model if model is not None else build_model(config)).eval()
        self.limits = limits or InputLimits()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def embed_dim(self) -> int:
        return self.config.out_embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- construction ---------------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs: Any) -> "ImageBindEncoder":
        """A randomly initialised tiny ImageBind; the same seed gives the same weights."""
        config = ImageBindConfig.tiny()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config)
        return cls(config, model, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: ImageBindConfig | None = None, *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        **kwargs: Any) -> "ImageBindEncoder":
        """Load an official-layout checkpoint (imagebind_huge.pth: a plain state_dict of
        ImageBindModel) from a local file; nothing is ever downloaded. `config` defaults
        to huge. A folder written by `save_pretrained` is passed on to `from_pretrained`.
        `dtype=torch.float16, device="cuda"` gives a half-precision GPU encoder."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path, device=device, dtype=dtype, **kwargs)
        if not path.is_file():
            raise CheckpointError(
                f"ImageBind checkpoint not found: {path}. Nothing is downloaded: fetch "
                "imagebind_huge.pth yourself and pass its local path."
            )
        try:  # mmap: the weights are paged in as the model is moved, not read twice
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # files in the pre-zip format cannot be mmapped
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch's messages run to a page: keep their first sentence
                first = next((line for line in str(e).splitlines() if line.strip()), "").split(". ")[0]
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from e
        return cls._from_state(config or ImageBindConfig.huge(), state, str(path), device, dtype, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **kwargs: Any) -> "ImageBindEncoder":
        """Load a folder written by `save_pretrained` (config.json + model.safetensors)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: not a saved ImageBind encoder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            config = ImageBindConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
            state = load_file(path / WEIGHTS_FILE)
        except CheckpointError:
            raise
        except Exception as e:  # JSON, UnicodeDecodeError, or safetensors' own error: a truncated or foreign file
            raise CheckpointError(f"{path}: not a readable saved ImageBind encoder ({type(e).__name__}: {e})") from e
        return cls._from_state(config, state, str(path), device, dtype, **kwargs)

    @classmethod
    def _from_state(cls, config: ImageBindConfig, state: Any, source: str, device: str | torch.device,
                    dtype: torch.dtype | None, **kwargs: Any) -> "ImageBindEncoder":
        """Build with empty parameters (no random init, no second copy) and take the checkpoint's tensors."""
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{source}: expected a state_dict of ImageBindModel (a dict of tensors)")
        with _parameters_on_meta():
            model = build_model(config)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k}: {tuple(state[k].shape)} in file, {tuple(v.shape)} in config"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            problems = [f"{len(found)} {what}, e.g. {found[:3]}"
                        for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                            ("shape mismatches", wrong)) if found]
            raise CheckpointError(
                f"{source} does not fit this ImageBind config (out_embed_dim={config.out_embed_dim}, "
                f"vision {config.vision_embed_dim}x{config.vision_num_blocks}): {'; '.join(problems)}. "
                "Pass config= with the checkpoint's widths (ImageBindConfig.huge() for imagebind_huge.pth)."
            )
        model.load_state_dict(state, assign=True)
        model.to(device=device, dtype=dtype)
        return cls(config, model, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors (the official key names, no prefix)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps({"model_type": "imagebind", **self.config.to_dict()}, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, path / WEIGHTS_FILE, metadata={"format": "pt"})

    # -- training-friendly steps ---------------------------------------------

    def prepare(self, modality: str, items: Any) -> torch.Tensor:
        """Preprocess a batch: the stacked tensors of `encoders.preprocess`, on CPU."""
        modality = check_modality(modality)
        fn, cfg = PREPROCESSORS[modality], self.config
        extra = {"audio": dict(num_mel_bins=cfg.audio_num_mel_bins, target_length=cfg.audio_target_len,
                               pad=cfg.audio_pad),
                 "video": dict(frames_per_clip=cfg.video_frames, clip_duration=cfg.video_clip_duration)}.get(modality, {})
        return torch.stack([fn(as_media(x, self.limits), self.limits, **extra) for x in _as_list(items)])

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """[N, 77] token ids with ImageBind's (CLIP's) BPE tokenizer, as data.py does."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise MediaError("encode_text takes strings")
        return torch.stack([_tokenizer()(t) for t in texts]) if texts else torch.zeros(0, 77, dtype=torch.long)

    def forward(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """ImageBind on a prepared batch (or token ids for "text") -> [N, embed_dim]."""
        if modality != "text":
            check_modality(modality)
        dtype = self.dtype if batch.is_floating_point() else None  # token ids stay integers
        key = MODEL_KEYS[modality]
        return self.model({key: batch.to(self.device, dtype)})[key]

    # -- inference -----------------------------------------------------------

    def encode(self, modality: str, items: Any) -> torch.Tensor:
        """Embed a batch of one modality -> float32 [N, embed_dim] on CPU.

        Items: a path (str/Path), file bytes, PIL image, numpy array or tensor, or a list
        of them (one item alone counts as a batch of one). Raises MediaError on bad input.
        Runs under inference mode; the result is an ordinary tensor, so layers trained on
        top of the frozen encoder can take it.
        """
        modality = check_modality(modality)
        media = [as_media(x, self.limits) for x in _as_list(items)]
        with torch.inference_mode():
            out = self._encode_cached(modality, [m.key for m in media], media,
                                      lambda chunk: self.prepare(modality, chunk))
        return out.clone()  # leave inference mode: inference tensors cannot be saved for backward

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """ImageBind's text branch -> float32 [N, embed_dim] on CPU (cached like `encode`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise MediaError("encode_text takes strings")
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        with torch.inference_mode():
            out = self._encode_cached("text", keys, texts, self.tokenize)
        return out.clone()

    def clear_cache(self) -> None:
        """Forget cached embeddings (needed after changing the weights)."""
        with self._lock:
            self._cache.clear()

    def _encode_cached(self, modality: str, keys: list[str], items: list[Any],
                       prepare: Callable[[list[Any]], torch.Tensor]) -> torch.Tensor:
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for k in keys:
                if (modality, k) in self._cache:
                    self._cache.move_to_end((modality, k))
                    found[k] = self._cache[(modality, k)]
        todo = {k: item for k, item in zip(keys, items) if k not in found}  # equal keys: equal content
        new: dict[str, torch.Tensor] = {}
        todo_keys = list(todo)
        was_training = self.model.training
        self.model.eval()  # dropout / drop-path off (the IMU head has dropout 0.5)
        try:
            for i in range(0, len(todo_keys), self.batch_size):
                chunk = todo_keys[i:i + self.batch_size]
                out = self(modality, prepare([todo[k] for k in chunk])).float().cpu()
                new.update(zip(chunk, out))
        finally:
            self.model.train(was_training)
        with self._lock:
            for k, emb in new.items():
                self._cache[(modality, k)] = emb
                self._cache.move_to_end((modality, k))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not keys:
            return torch.zeros(0, self.embed_dim)
        return torch.stack([found[k] if k in found else new[k] for k in keys])
