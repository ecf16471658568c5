"""What decoders return (one artifact per conditioning row) and how artifacts become files.

Each `.save(path)` writes a file that ordinary readers open — PNG, WAV (16-bit PCM), MP4 (H.264,
yuv420p) — atomically (a temporary file in the same folder, then `os.replace`), so a reader never
sees half a file. Provenance (`meta`: model id, seed, sha256 of the conditioning, ...) goes inside
the file as one JSON text: a PNG tEXt chunk `provenance` (plus one tEXt chunk per key, for humans),
the WAV INFO comment, the MP4 `comment` tag. `read_provenance(path)` reads it back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, PngImagePlugin

from decoders.errors import DecoderError

PROVENANCE_KEY = "provenance"
SOFTWARE = "anygpt decoders"


@dataclass
class ImageArtifact:
    image: Image.Image
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image):
            raise DecoderError(f"ImageArtifact.image must be a PIL image, got {type(self.image).__name__}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write a PNG with the provenance in tEXt chunks."""
        info = PngImagePlugin.PngInfo()
        info.add_text(PROVENANCE_KEY, _provenance_json(self.meta))
        for key, value in self.meta.items():
            info.add_text(str(key), value if isinstance(value, str) else json.dumps(value))
        info.add_text("Software", SOFTWARE)
        with _atomic(path) as tmp:
            self.image.save(tmp, format="PNG", pnginfo=info)
        return Path(path)


@dataclass
class AudioArtifact:
    waveform: np.ndarray  # float32 mono [N], nominally in [-1, 1]
    sample_rate: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.waveform = np.asarray(self.waveform, dtype=np.float32)
        if self.waveform.ndim != 1 or self.waveform.size == 0:
            raise DecoderError(f"AudioArtifact.waveform must be mono [N] with N > 0, got shape {self.waveform.shape}")
        if not isinstance(self.sample_rate, (int, np.integer)) or self.sample_rate <= 0:
            raise DecoderError(f"AudioArtifact.sample_rate must be a positive int, got {self.sample_rate!r}")
        self.sample_rate = int(self.sample_rate)

    @property
    def duration(self) -> float:
        return self.waveform.size / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Write a 16-bit PCM WAV (samples clipped to [-1, 1]) with the provenance in its INFO comment."""
        with _atomic(path) as tmp:
            with sf.SoundFile(tmp, "w", samplerate=self.sample_rate, channels=1, subtype="PCM_16",
                              format="WAV") as f:
                f.title = _title(self.meta)
                f.comment = _provenance_json(self.meta)
                f.software = SOFTWARE
                f.write(np.clip(self.waveform, -1.0, 1.0))
        return Path(path)


@dataclass
class VideoArtifact:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3 or not all(
                self.frames.shape):
            raise DecoderError(f"VideoArtifact.frames must be uint8 [F, H, W, 3] with F, H, W > 0, got "
                               f"{self.frames.dtype} {list(self.frames.shape)}")
        if not isinstance(self.fps, (int, np.integer)) or self.fps <= 0:
            raise DecoderError(f"VideoArtifact.fps must be a positive int, got {self.fps!r}")
        self.fps = int(self.fps)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an MP4 (H.264 via libx264, else MPEG-4 Part 2) with the provenance in its `comment` tag.

        yuv420p needs even sides, so an odd height or width gets one replicated edge row/column.
        """
        frames = self.frames
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with _atomic(path) as tmp:
            with av.open(str(tmp), "w", format="mp4") as container:
                container.metadata["title"] = _title(self.meta)
                container.metadata["comment"] = _provenance_json(self.meta)
                stream = container.add_stream(codec, rate=self.fps)
                stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "18"}
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
        return Path(path)


Artifact = ImageArtifact | AudioArtifact | VideoArtifact


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] (diffusers' output_type="np") as uint8, rounded as diffusers does."""
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


def read_provenance(path: str | os.PathLike) -> dict:
    """The `meta` that `.save` stored inside a PNG, WAV or MP4 file ({} if there is none)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as im:
            text = im.text.get(PROVENANCE_KEY)
    elif suffix == ".wav":
        with sf.SoundFile(path) as f:
            text = f.comment
    elif suffix == ".mp4":
        with av.open(str(path)) as container:
            text = container.metadata.get("comment")
    else:
        raise DecoderError(f"no provenance reader for {suffix or 'files without a suffix'} (png, wav, mp4)")
    return json.loads(text) if text else {}


def _provenance_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, default=str)


def _title(meta: dict) -> str:
    return f"{meta.get('modality', 'media')} by {meta.get('model_id', 'unknown')}, seed {meta.get('seed', '?')}"


@contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; media files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
