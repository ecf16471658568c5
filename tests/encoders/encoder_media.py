"""Seeded media for the encoder tests: images, sweeps, moving-square videos, and their files."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image


def pattern_image(width: int, height: int, seed: int, channels: int = 3) -> np.ndarray:
    """Gradients plus noise plus a block: detail that resizing and cropping must get right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4, np.full_like(x, 200)], -1)[..., :channels]
    img = base + rng.normal(0, 20, size=base.shape)
    img[height // 4: height // 2, width // 3: width // 2, :3] = [250, 20, 30]
    return np.clip(img, 0, 255).astype(np.uint8)


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0, offset: float = 0.05) -> np.ndarray:
    """A rising sweep plus noise plus a DC offset (the offset exercises data.py's mean subtraction)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.normal(size=t.shape) + offset
    out = np.stack([wave * (1 - 0.3 * c) for c in range(channels)], -1)
    return out.astype(np.float32)


def write_wav(path: Path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> Path:
    soundfile.write(path, tone(seconds, rate, channels, seed), rate, subtype="PCM_16")
    return path


def moving_square_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        f = pattern_image(width, height, seed + i)
        x = int(i * (width - 20) / max(count - 1, 1))
        f[height // 3: height // 3 + 20, x:x + 20] = rng.integers(0, 255, 3)
        frames[i] = f
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int, codec: str = "libx264") -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def decode_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
