"""Per-modality preprocessing for ImageBind, matching the reference `imagebind/data.py`.

One function per modality takes ONE input and returns the tensor ImageBind's model
takes for it (no batch dimension):

    load_and_transform_image    [3, 224, 224]         = data.py load_and_transform_vision_data
    load_and_transform_audio    [3, 1, 128, 204]      = data.py load_and_transform_audio_data
    load_and_transform_video    [15, 3, 2, 224, 224]  = data.py load_and_transform_video_data
    load_and_transform_depth    [1, 224, 224]         (data.py has none: Omnivore's RGB-D recipe)
    load_and_transform_thermal  [1, 224, 224]         (data.py has none: grayscale, resize, crop)
    load_and_transform_imu      [6, 2000]             (data.py has none: crop/pad to 2000 samples)

An input is a path (str or PathLike), the bytes of a file, a PIL image, a numpy array
or a torch tensor. Files are read once into memory (`Media`), so the same bytes are
hashed for the encoder's cache and decoded here. Every failure (unreadable, truncated,
wrong modality, over the `InputLimits`) raises `MediaError` naming the input.

Formats read:
    image, thermal  anything PIL opens (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)
    depth           a .npy array, or a PIL-readable image (8/16/32-bit values taken as is)
    audio           WAV, FLAC, OGG/Vorbis, MP3 (and the rest of libsndfile) via soundfile;
                    anything else FFmpeg reads (M4A/AAC, Opus, the audio track of
                    MP4/MKV/WebM/AVI) via PyAV
    video           anything FFmpeg reads, via PyAV (MP4, MKV, WebM, AVI, MOV, ...)
    imu             a .npy array
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from encoders.errors import MediaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
DEPTH_MAX_DISPARITY, DEPTH_MEAN, DEPTH_STD = 75.0, 0.0418, 0.0295
ARRAY_AUDIO_RATE = 16_000  # sample rate assumed for waveform arrays
ARRAY_VIDEO_FPS = 8.0  # frame rate assumed for frame arrays


@dataclass
class InputLimits:
    """Refuse inputs that would take unbounded memory or time to decode."""

    max_bytes: int = 256 * 2**20  # a file, or an array's data
    max_pixels: int = 50_000_000  # one image or one video frame (width * height)
    max_audio_seconds: float = 600.0
    max_video_seconds: float = 600.0
    max_video_frames: int = 36_000
    max_imu_samples: int = 1_000_000


DEFAULT_LIMITS = InputLimits()


# ---------------------------------------------------------------------------
# Inputs: read once, name for messages, hash for the cache


@dataclass(eq=False)
class Media:
    """One input, read: `data` holds a file's bytes, or `value` a PIL image / numpy array."""

    name: str
    data: bytes | None = None
    value: Any = None
    channels_first: bool = False  # arrays that came as torch tensors ([C, H, W], [T, C, H, W])

    @cached_property
    def key(self) -> str:
        """sha256 of the content, so the same file, bytes or pixels give the same key."""
        h = hashlib.sha256()
        if self.data is not None:
            h.update(b"bytes:" + self.data)
        elif isinstance(self.value, Image.Image):
            h.update(f"pil:{self.value.mode}:{self.value.size}:".encode())
            h.update(self.value.tobytes())
        else:
            a = np.ascontiguousarray(self.value)
            h.update(f"array:{a.dtype.str}:{a.shape}:{self.channels_first}:".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def sniff(self) -> str | None:
        return sniff(self.data) if self.data is not None else None


def as_media(item: Any, limits: InputLimits | None = None) -> Media:
    """Read a path, bytes, PIL image, numpy array or tensor into a `Media`."""
    limits = limits or DEFAULT_LIMITS
    if isinstance(item, Media):
        return item
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise MediaError(f"{path}: no such file")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise MediaError(f"{path}: file is {size} bytes, over the limit of {limits.max_bytes}")
        return _bytes_media(path.read_bytes(), str(path), limits)
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        return _bytes_media(data, f"<{len(data)} bytes>", limits)
    if isinstance(item, Image.Image):
        name = f"<PIL image {item.width}x{item.height} {item.mode}>"
        _check_pixels(name, item.width, item.height, limits)
        try:
            item.load()  # an image from Image.open is read lazily; a truncated one fails here
        except Exception as e:
            raise MediaError(f"{name}: cannot read the image data: {type(e).__name__}: {e}") from e
        return Media(name, value=item)
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        t = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
        return _array_media(t.numpy(), f"<tensor {tuple(t.shape)} {t.dtype}>", limits, channels_first=True)
    if isinstance(item, np.ndarray):
        return _array_media(item, f"<array {item.shape} {item.dtype}>", limits, channels_first=False)
    raise MediaError(
        f"unsupported input of type {type(item).__name__}: "
        "give a path, bytes, a PIL image, a numpy array or a torch tensor"
    )


def _bytes_media(data: bytes, name: str, limits: InputLimits) -> Media:
    if not data:
        raise MediaError(f"{name}: empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaError(f"{name}: {len(data)} bytes, over the limit of {limits.max_bytes}")
    return Media(name, data=data)


def _array_media(a: np.ndarray, name: str, limits: InputLimits, channels_first: bool) -> Media:
    if a.size == 0:
        raise MediaError(f"{name}: empty array")
    if a.nbytes > limits.max_bytes:
        raise MediaError(f"{name}: {a.nbytes} bytes of data, over the limit of {limits.max_bytes}")
    if a.dtype.kind not in "biuf":
        raise MediaError(f"{name}: arrays must hold numbers, not {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise MediaError(f"{name}: array holds NaN or infinity")
    return Media(name, value=a, channels_first=channels_first)


def sniff(data: bytes) -> str | None:
    """Guess the kind of a file from its first bytes: 'image', 'audio', 'video', 'array' or None."""
    head = data[:16]
    riff = head[8:12] if head[:4] == b"RIFF" else b""
    if (head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*"))
            or riff == b"WEBP"):
        return "image"
    if riff == b"WAVE" or head.startswith((b"fLaC", b"OggS", b"ID3", b"FORM")):
        return "audio"
    if head[4:8] == b"ftyp":
        return "audio" if head[8:12] in (b"M4A ", b"M4B ") else "video"
    if riff == b"AVI " or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    if head.startswith(b"\x93NUMPY"):
        return "array"
    return None


@contextmanager
def _reading(media: Media, modality: str) -> Iterator[None]:
    """Turn whatever a decoder raises into a MediaError that names the input."""
    try:
        yield
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(f"{media.name}: image is too large ({e})") from e
    except UnidentifiedImageError as e:
        raise MediaError(f"{media.name}: cannot read as {modality}: not an image format PIL knows") from e
    except Exception as e:  # PIL, libsndfile, FFmpeg and torch all have their own errors
        kind, family = media.sniff(), {"thermal": "image", "depth": "image"}.get(modality, modality)
        hint = f" (the data looks like {kind})" if kind in ("image", "audio", "video") and kind != family else ""
        detail = e.strerror if isinstance(e, av.FFmpegError) and e.strerror else str(e)
        raise MediaError(f"{media.name}: cannot read as {modality}{hint}: {type(e).__name__}: {detail}") from e


def _refuse_kind(media: Media, modality: str, *wrong: str) -> None:
    kind = media.sniff()
    if kind in wrong:
        raise MediaError(f"{media.name}: this is {kind} data, not {modality}")


def _check_pixels(name: str, width: int, height: int, limits: InputLimits) -> None:
    if width <= 0 or height <= 0:
        raise MediaError(f"{name}: empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise MediaError(f"{name}: {width}x{height} pixels, over the limit of {limits.max_pixels}")


def clip_timepoints(duration: float, clip_duration: float, clips: int) -> list[tuple[Fraction, Fraction]]:
    """pytorchvideo's ConstantClipsPerVideoSampler as data.py drives it: `clips` windows of
    `clip_duration` s, starts evenly spaced over [0, duration - clip_duration] (all at 0 for
    a shorter input). Kept in exact fractions as pytorchvideo does, so indices round alike."""
    clip = Fraction(clip_duration)
    step = Fraction(max(duration - clip, 0)) / clips
    return [(step * i, step * i + clip) for i in range(clips)]


# ---------------------------------------------------------------------------
# Image and thermal: PIL, as data.py reads images

_IMAGE_TRANSFORM = transforms.Compose([
    transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
])
_THERMAL_TRANSFORM = transforms.Compose([
    transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
])


def open_image(media: Media, limits: InputLimits) -> Image.Image:
    """A loaded PIL image from file bytes, a PIL image, or an array ([H, W], [H, W, C]; tensors
    [C, H, W]) of uint8, or of floats in [0, 1]."""
    if isinstance(media.value, Image.Image):
        return media.value
    if media.value is not None:
        return _array_to_pil(media, limits)
    _refuse_kind(media, "an image", "audio", "video", "array")
    image = Image.open(io.BytesIO(media.data))  # reads the header only
    _check_pixels(media.name, image.width, image.height, limits)
    image.load()  # raises on truncated data
    return image


def _array_to_pil(media: Media, limits: InputLimits) -> Image.Image:
    """Arrays go through PIL too, so an array and the PNG of it give the same tensor."""
    a = media.value
    if a.ndim == 3 and (a.shape[-1] not in (1, 3, 4) or media.channels_first) and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise MediaError(f"{media.name}: an image array must be [H, W], [H, W, 3|4] or [3|4, H, W]")
    _check_pixels(media.name, a.shape[1], a.shape[0], limits)
    if a.dtype.kind in "bf":
        if a.min() < 0 or a.max() > 1:
            raise MediaError(f"{media.name}: float image values must lie in [0, 1]")
        a = np.rint(a * 255.0)
    elif a.dtype != np.uint8:
        raise MediaError(f"{media.name}: image arrays must be uint8 or float in [0, 1], not {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)))


def load_and_transform_image(item: Any, limits: InputLimits | None = None) -> torch.Tensor:
    """[3, 224, 224]: RGB, resize short side to 224 (bicubic), centre crop, CLIP normalisation."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "image"):
        return _IMAGE_TRANSFORM(open_image(media, limits).convert("RGB"))


def load_and_transform_thermal(item: Any, limits: InputLimits | None = None) -> torch.Tensor:
    """[1, 224, 224]: grayscale, resize 224 (bicubic), centre crop, values in [0, 1], as the
    community loaders for ImageBind's thermal branch do (data.py ships none)."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "thermal"):
        return _THERMAL_TRANSFORM(open_image(media, limits).convert("L"))


# ---------------------------------------------------------------------------
# Depth and IMU: plain arrays


def _read_array(media: Media, limits: InputLimits) -> np.ndarray:
    """A float32 array from an array input, a .npy file, or (for depth maps) an image file."""
    if media.value is not None:
        a = np.asarray(media.value)
    elif media.sniff() == "array":
        a = np.load(io.BytesIO(media.data), allow_pickle=False)
        _array_media(a, media.name, limits, channels_first=False)  # the same checks as for arrays
    else:
        a = np.asarray(open_image(media, limits))
    return a.astype(np.float32)


def depth_to_disparity(depth_m: np.ndarray, focal_length_px: float, baseline_m: float = 0.075) -> np.ndarray:
    """Metric depth (metres) -> disparity, as Omnivore / ImageBind use (Kinect baseline 7.5 cm)."""
    return (baseline_m * focal_length_px / np.clip(depth_m, 0.01, None)).astype(np.float32)


def load_and_transform_depth(item: Any, limits: InputLimits | None = None) -> torch.Tensor:
    """[1, 224, 224] from a disparity map ([H, W]; values taken as they are, so convert
    metric depth with `depth_to_disparity` first). ImageBind's data.py has no depth loader
    and its paper follows Omnivore for depth, so this is Omnivore's RGB-D recipe: clamp to
    [0.01, 75] and divide by 75, resize short side 224 (bilinear), centre crop, normalise
    with mean 0.0418, std 0.0295."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "depth"):
        a = _read_array(media, limits)
        a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
        a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
        if a.ndim != 2:
            raise MediaError(f"{media.name}: a depth map must be one channel [H, W], got shape {a.shape}")
        _check_pixels(media.name, a.shape[1], a.shape[0], limits)
        x = torch.from_numpy(a)[None].clamp(0.01, DEPTH_MAX_DISPARITY) / DEPTH_MAX_DISPARITY
        x = transforms.functional.resize(x, 224, antialias=True)
        x = transforms.functional.center_crop(x, 224)
        return (x - DEPTH_MEAN) / DEPTH_STD


def load_and_transform_imu(item: Any, limits: InputLimits | None = None, *, num_samples: int = 2000) -> torch.Tensor:
    """[6, 2000] from [6, T] or [T, 6] (accelerometer xyz, gyroscope xyz): the middle 2000
    samples, or zero-padded at the end when shorter. Values are taken as they are."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "imu"):
        _refuse_kind(media, "IMU data", "image", "audio", "video")
        a = _read_array(media, limits)
        if a.ndim != 2 or 6 not in a.shape:
            raise MediaError(f"{media.name}: IMU data must be [6, T] or [T, 6], got shape {a.shape}")
        a = a if a.shape[0] == 6 else a.T
        length = a.shape[1]
        if length > limits.max_imu_samples:
            raise MediaError(f"{media.name}: {length} IMU samples, over the limit of {limits.max_imu_samples}")
        if length >= num_samples:
            start = (length - num_samples) // 2
            a = a[:, start:start + num_samples]
        else:
            a = np.pad(a, ((0, 0), (0, num_samples - length)))
        return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------------------
# Audio


def load_audio(media: Media, limits: InputLimits) -> tuple[torch.Tensor, int]:
    """Waveform [channels, samples] float32 in [-1, 1] and its sample rate.

    Arrays are [samples], [channels, samples] or [samples, channels] at 16 kHz (int16,
    int32 or float). Files: soundfile for what it knows (WAV/FLAC/OGG/AIFF/MP3), PyAV for the rest."""
    if media.value is not None:
        a = media.value
        if isinstance(a, Image.Image) or a.ndim > 2:
            raise MediaError(f"{media.name}: an audio array must be [samples] or [channels, samples]")
        a = a[None] if a.ndim == 1 else a
        a = a.T if a.shape[0] > a.shape[1] and a.shape[1] <= 8 else a  # [samples, channels]
        if a.dtype.kind in "iu":
            if a.dtype not in (np.int16, np.int32):
                raise MediaError(f"{media.name}: integer audio must be int16 or int32, not {a.dtype}")
            a = a / -float(np.iinfo(a.dtype).min)  # as libsndfile scales PCM: int16 / 32768
        waveform, rate = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), ARRAY_AUDIO_RATE
    else:
        _refuse_kind(media, "audio", "image", "array")
        waveform, rate = None, 0
        if media.sniff() == "audio":  # WAV, FLAC, OGG, AIFF, tagged MP3: libsndfile, like torchaudio
            waveform, rate = _read_soundfile(media, limits)
        if waveform is None:
            waveform, rate = _read_audio_av(media, limits)
    if waveform.shape[-1] == 0:
        raise MediaError(f"{media.name}: the audio is empty")
    if waveform.shape[-1] / rate > limits.max_audio_seconds:
        raise MediaError(f"{media.name}: {waveform.shape[-1] / rate:.1f} s of audio, "
                         f"over the limit of {limits.max_audio_seconds} s")
    return waveform, rate


def _read_soundfile(media: Media, limits: InputLimits) -> tuple[torch.Tensor | None, int]:
    """libsndfile; (None, 0) when it does not know the format."""
    try:
        info = soundfile.info(io.BytesIO(media.data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None, 0
    if info.samplerate > 0 and info.frames / info.samplerate > limits.max_audio_seconds:
        raise MediaError(f"{media.name}: {info.frames / info.samplerate:.1f} s of audio, "
                         f"over the limit of {limits.max_audio_seconds} s")
    if media.data[:4] == b"RIFF" and media.data[8:12] == b"WAVE":
        _check_wav_complete(media)
    data, rate = soundfile.read(io.BytesIO(media.data), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


def _check_wav_complete(media: Media) -> None:
    """libsndfile silently reads a cut-off WAV; compare the data chunk's size with what is there."""
    data, pos = media.data, 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if size not in (0, 0xFFFFFFFF) and pos + 8 + size > len(data):  # 0 / -1: streamed WAV
                raise MediaError(f"{media.name}: truncated WAV ({len(data) - pos - 8} of {size} data bytes)")
            return
        pos += 8 + size + (size & 1)


def _read_audio_av(media: Media, limits: InputLimits) -> tuple[torch.Tensor, int]:
    """The first audio stream of anything FFmpeg reads, as planar float."""
    with av.open(io.BytesIO(media.data)) as container:
        if not container.streams.audio:
            kind = "a video without sound" if container.streams.video else "no audio"
            raise MediaError(f"{media.name}: no audio stream ({kind})")
        stream = container.streams.audio[0]
        rate = stream.rate
        if not rate:
            raise MediaError(f"{media.name}: audio stream without a sample rate")
        if container.duration and container.duration / 1e6 > limits.max_audio_seconds:
            raise MediaError(f"{media.name}: {container.duration / 1e6:.1f} s of audio, "
                             f"over the limit of {limits.max_audio_seconds} s")
        resampler = av.AudioResampler(format="fltp")  # keep rate and layout; planar float32
        chunks, total = [], 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                total += chunks[-1].shape[-1]
            if total / rate > limits.max_audio_seconds:
                raise MediaError(f"{media.name}: over {limits.max_audio_seconds} s of audio")
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    if not chunks:
        raise MediaError(f"{media.name}: the audio is empty")
    return torch.from_numpy(np.concatenate(chunks, axis=-1).astype(np.float32)), rate


def _melspec(clip: torch.Tensor, sample_rate: int, num_mel_bins: int, target_length: int) -> torch.Tensor:
    """data.py's waveform2melspec after its mean subtraction: Kaldi fbank (of channel 0, as
    Kaldi takes it), [mel, frames], cut or zero-pad to target_length, [1, mel, frames]."""
    fbank = torchaudio.compliance.kaldi.fbank(
        clip, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
        window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0, frame_length=25, frame_shift=10,
    ).transpose(0, 1)
    pad = target_length - fbank.size(1)
    fbank = F.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :target_length]
    return fbank.unsqueeze(0)


# How a sound shorter than its clip is filled (`load_and_transform_audio`'s `pad`).
AUDIO_PADS = ("fbank", "silence")


def load_and_transform_audio(
    item: Any,
    limits: InputLimits | None = None,
    *,
    sample_rate: int = 16_000,
    num_mel_bins: int = 128,
    target_length: int = 204,
    clip_duration: float = 2,
    clips_per_video: int = 3,
    pad: str = "fbank",
) -> torch.Tensor:
    """[3, 1, 128, 204]: resample to 16 kHz, 3 clips of 2 s spread over the audio, Kaldi fbank
    (128 mel bins, 25 ms windows, 10 ms hop) cut/padded to 204 frames, normalised with
    mean -4.268 and std 9.138. Stereo: Kaldi reads channel 0, as in data.py.

    `pad` is how a clip shorter than `clip_duration` is filled. "fbank" (data.py's) pads the log-mel
    frames with 0: a level in every mel bin about as loud as white noise, so a noise burst and
    its padding look alike and its length cannot be seen. "silence" pads the waveform with zeros
    before the fbank, so the tail is Kaldi's floor, as real silence is (the tiny preset; README,
    "Padding with silence")."""
    if pad not in AUDIO_PADS:
        raise ValueError(f"audio pad must be one of {AUDIO_PADS}, got {pad!r}")
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "audio"):
        waveform, rate = load_audio(media, limits)
        if rate != sample_rate:
            waveform = torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=sample_rate)
        clips = []
        for start, end in clip_timepoints(waveform.size(1) / sample_rate, clip_duration, clips_per_video):
            clip = waveform[:, int(start * sample_rate):int(end * sample_rate)]
            if clip.size(1) < sample_rate * 25 // 1000:
                raise MediaError(f"{media.name}: the audio is too short ({clip.size(1)} samples at "
                                 f"{sample_rate} Hz; ImageBind needs at least 25 ms)")
            # data.py centres each clip in place, on a view of the waveform, so an overlapping
            # later clip sees the earlier subtraction; doing the same keeps the numbers equal.
            clip -= clip.mean()
            short = int(clip_duration * sample_rate) - clip.size(1)
            if pad == "silence" and short > 0:
                clip = F.pad(clip, (0, short))
            clips.append(_melspec(clip, sample_rate, num_mel_bins, target_length))
        return (torch.stack(clips) - AUDIO_MEAN) / AUDIO_STD


def audio_window(item: Any, start: float, end: float | None, limits: InputLimits | None = None) -> np.ndarray:
    """The part of a sound from `start` to `end` seconds (None: to its end) as a float32
    [channels, samples] array at 16 kHz, the form `encode` takes back. A window that starts
    past the sound's end, or keeps under 25 ms of it, is 25 ms of silence: that the sound is over
    is what it shows (README, "A sound's tail and a clip's grey copy as more tokens")."""
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"an audio window needs 0 <= start < end, got ({start}, {end})")
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    sample_rate = ARRAY_AUDIO_RATE  # what an array is read back at
    with _reading(media, "audio"):
        waveform, rate = load_audio(media, limits)
        if rate != sample_rate:
            waveform = torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=sample_rate)
    part = waveform[:, int(start * sample_rate):None if end is None else int(end * sample_rate)]
    if part.size(1) < sample_rate * 25 // 1000:
        part = torch.zeros(waveform.size(0), sample_rate * 25 // 1000)
    return np.ascontiguousarray(part.numpy(), dtype=np.float32)


LOUDNESS_TONE_HZ = 1000.0  # the carrier of `audio_loudness`
LOUDNESS_HOP_S = 0.01  # its loudness is measured over 10-ms frames


def audio_loudness(item: Any, start: float, end: float | None, limits: InputLimits | None = None) -> np.ndarray:
    """A window of a sound (`audio_window`) with its content replaced by a 1 kHz tone that follows
    its loudness (RMS over 10-ms frames): how loud the sound is there, and for how long, whatever it
    is. A toy sound's tail read so says whether the sound lasts that long and nothing of its kind,
    so a length read from it cannot lean on the kind (README, "A sound's head, and sounds past
    either length")."""
    part = audio_window(item, start, end, limits)
    hop = int(LOUDNESS_HOP_S * ARRAY_AUDIO_RATE)
    frames = -(-part.shape[1] // hop)
    padded = np.zeros((part.shape[0], frames * hop), dtype=np.float64)
    padded[:, :part.shape[1]] = part
    rms = np.sqrt((padded.reshape(part.shape[0], frames, hop) ** 2).mean(-1))  # [channels, frames]
    loudness = np.repeat(rms, hop, axis=1)[:, :part.shape[1]] * np.sqrt(2)  # a sine's peak from its RMS
    t = np.arange(part.shape[1]) / ARRAY_AUDIO_RATE
    return np.ascontiguousarray(loudness * np.sin(2 * np.pi * LOUDNESS_TONE_HZ * t), dtype=np.float32)


# ---------------------------------------------------------------------------
# Video


def _frame_indices(fps: float, count: int, start: Fraction, end: Fraction, frames_per_clip: int) -> list[int]:
    """Frames of one clip as data.py picks them: decord's get_clip takes frames
    ceil(fps*start) .. ceil(fps*end)-1, then pytorchvideo's UniformTemporalSubsample keeps
    `frames_per_clip` of them, evenly spaced (first and last for 2)."""
    first = math.ceil(fps * start)
    stop = min(math.ceil(fps * end), count)
    if stop <= first:
        return []
    picks = torch.linspace(0, stop - first - 1, frames_per_clip).clamp(0, stop - first - 1).long()
    return [first + int(i) for i in picks]


def _video_array(media: Media, limits: InputLimits) -> np.ndarray:
    a = media.value
    if a.ndim == 4 and a.shape[-1] != 3 and a.shape[1] == 3:
        a = a.transpose(0, 2, 3, 1)  # [T, 3, H, W] -> [T, H, W, 3]
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise MediaError(f"{media.name}: a video array must be uint8 [T, H, W, 3] (or [T, 3, H, W])")
    _check_pixels(media.name, a.shape[2], a.shape[1], limits)
    return a


def _check_video_length(media: Media, fps: float, count: int, limits: InputLimits) -> None:
    if count == 0:
        raise MediaError(f"{media.name}: the video has no frames")
    if count > limits.max_video_frames:
        raise MediaError(f"{media.name}: {count} frames, over the limit of {limits.max_video_frames}")
    if count / fps > limits.max_video_seconds:
        raise MediaError(f"{media.name}: {count / fps:.1f} s of video, over the limit of {limits.max_video_seconds} s")


def video_frames(item: Any, limits: InputLimits | None = None) -> np.ndarray:
    """A clip's frames as uint8 [T, H, W, 3] at 8 fps, the rate an array is read at (a file at
    another frame rate is sampled at 8 fps)."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "video"):
        if media.value is not None:
            return _video_array(media, limits)
        _refuse_kind(media, "video", "image", "array")
        fps, count = _probe_video(media, limits)
        _check_video_length(media, fps, count, limits)
        steps = max(1, round(count / fps * ARRAY_VIDEO_FPS))
        picks = [min(count - 1, int(k * fps / ARRAY_VIDEO_FPS)) for k in range(steps)]
        got = _decode_frames(media, sorted(set(picks)), count, limits)
        return np.stack([got[i] for i in picks])


def grey_video(item: Any, limits: InputLimits | None = None) -> np.ndarray:
    """A clip's grey copy, the mean of its colour channels in all three, as uint8 [T, H, W, 3] at
    8 fps (`video_frames`), the form `encode` takes back: its shapes and motion without their
    colours (README, "A sound's tail and a clip's grey copy as more tokens")."""
    frames = video_frames(item, limits)
    return frames.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1).round().astype(np.uint8)


def middle_frame(item: Any, limits: InputLimits | None = None) -> np.ndarray:
    """A clip's middle frame, uint8 [H, W, 3], to read as a picture: its shapes and colours without
    their motion (README, "A sound's tail and a clip's grey copy as more tokens")."""
    frames = video_frames(item, limits)
    return np.ascontiguousarray(frames[len(frames) // 2])


def _read_video_frames(media: Media, limits: InputLimits, clip_duration: float, clips: int,
                       frames_per_clip: int) -> list[np.ndarray]:
    """For each clip, its picked frames as uint8 [T, H, W, 3]. Only those frames are converted."""
    if media.value is not None:
        a = _video_array(media, limits)
        fps, count, frames = ARRAY_VIDEO_FPS, a.shape[0], a
    else:
        _refuse_kind(media, "video", "image", "array")
        (fps, count), frames = _probe_video(media, limits), None
    _check_video_length(media, fps, count, limits)
    duration = count / fps  # as decord's reader gives it to pytorchvideo
    picks = [_frame_indices(fps, count, s, e, frames_per_clip)
             for s, e in clip_timepoints(duration, clip_duration, clips)]
    if not all(picks):
        raise MediaError(f"{media.name}: a {clip_duration} s clip of this video holds no frame ({fps} fps)")
    if frames is None:
        frames = _decode_frames(media, sorted({i for p in picks for i in p}), count, limits)
    return [np.stack([frames[i] for i in p]) for p in picks]


def _video_stream(container: av.container.InputContainer, media: Media) -> av.VideoStream:
    streams = [s for s in container.streams.video
               if not s.disposition & av.stream.Disposition.attached_pic]  # cover art of audio files
    if not streams:
        kind = "audio without video" if container.streams.audio else "no video"
        raise MediaError(f"{media.name}: no video stream ({kind})")
    return streams[0]


def _probe_video(media: Media, limits: InputLimits) -> tuple[float, int]:
    """Frame rate and frame count, from the header when it says, else by decoding."""
    with av.open(io.BytesIO(media.data)) as container:
        stream = _video_stream(container, media)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise MediaError(f"{media.name}: the video has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:  # 0 when the header does not say
            _check_pixels(media.name, width, height, limits)
        if container.duration and container.duration / 1e6 > limits.max_video_seconds:
            raise MediaError(f"{media.name}: {container.duration / 1e6:.1f} s of video, "
                             f"over the limit of {limits.max_video_seconds} s")
        count = stream.frames
        if count <= 0:  # no frame count in the header (some MKV/WebM): decode to count
            count = 0
            for _ in container.decode(stream):
                count += 1
                if count > limits.max_video_frames:
                    break
    return float(rate), count


def _decode_frames(media: Media, wanted: list[int], count: int, limits: InputLimits) -> dict[int, np.ndarray]:
    """Decode in order and convert only the wanted frames to RGB."""
    frames: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(media.data)) as container:
        stream = _video_stream(container, media)
        stream.thread_type = "AUTO"
        want, last, decoded = set(wanted), wanted[-1], 0
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index in want:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    if len(frames) < len(want):
        raise MediaError(f"{media.name}: truncated video (the header says {count} frames; {decoded} decode)")
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise MediaError(f"{media.name}: the frame size changes within the video {sorted(shapes)}")
    height, width, _ = shapes.pop()
    _check_pixels(media.name, width, height, limits)
    return frames


def _short_side_scale(clip: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo's ShortSideScale: [C, T, H, W], bilinear, long side floor(long/short*size)."""
    _, _, h, w = clip.shape
    new_h, new_w = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    return F.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _spatial_crop(clip: torch.Tensor, size: int, index: int) -> torch.Tensor:
    """Crop 0, 1, 2 = left, centre, right (top, centre, bottom when taller than wide)."""
    h, w = clip.shape[-2:]
    y, x = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if h > w:
        y = {0: 0, 1: y, 2: h - size}[index]
    else:
        x = {0: 0, 1: x, 2: w - size}[index]
    return clip[..., y:y + size, x:x + size]


def load_and_transform_video(
    item: Any,
    limits: InputLimits | None = None,
    *,
    clip_duration: float = 2,
    clips_per_video: int = 5,
    frames_per_clip: int = 2,
    size: int = 224,
) -> torch.Tensor:
    """[15, 3, 2, 224, 224]: 5 clips of 2 s spread over the video, 2 frames each (first and
    last of the clip), short side scaled to 224 (bilinear), CLIP normalisation, then 3 crops
    of 224 (left/centre/right) per clip, ordered clip by clip. Arrays: uint8 [T, H, W, 3]
    at 8 fps."""
    limits = limits or DEFAULT_LIMITS
    media = as_media(item, limits)
    with _reading(media, "video"):
        mean = torch.tensor(CLIP_MEAN)[:, None, None, None]
        std = torch.tensor(CLIP_STD)[:, None, None, None]
        crops = []
        for frames in _read_video_frames(media, limits, clip_duration, clips_per_video, frames_per_clip):
            clip = torch.from_numpy(frames).to(torch.float32).permute(3, 0, 1, 2) / 255.0  # [C, T, H, W]
            clip = (_short_side_scale(clip, size) - mean) / std
            crops += [_spatial_crop(clip, size, i) for i in range(3)]
        return torch.stack(crops)


PREPROCESSORS = {
    "image": load_and_transform_image,
    "audio": load_and_transform_audio,
    "video": load_and_transform_video,
    "depth": load_and_transform_depth,
    "thermal": load_and_transform_thermal,
    "imu": load_and_transform_imu,
}
