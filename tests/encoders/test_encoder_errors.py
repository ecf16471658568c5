"""Fuzzed and wrong inputs: each raises MediaError with a clear message, never anything else."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from encoder_media import moving_square_frames, write_mp4, write_wav
from PIL import Image

from encoders import ImageBindEncoder, InputLimits, MediaError


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares the given size, followed by no real image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 size fields rewritten."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def wav_claiming(data_bytes: int) -> bytes:
    """A WAV header declaring `data_bytes` of 16-bit mono audio at 16 kHz, with 1 s actually there."""
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
    return header + b"data" + struct.pack("<I", data_bytes) + b"\x01\x00" * 16_000


def faststart_mp4(path: Path) -> Path:
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in moving_square_frames(40, 64, 48):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def empty_wav(path: Path) -> Path:
    soundfile.write(path, np.zeros(0, np.float32), 16_000, subtype="PCM_16")
    return path


def pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def cut(path: Path, fraction: float) -> bytes:
    data = path.read_bytes()
    return data[:int(len(data) * fraction)]


# (id, modality, make(media_dir, tmp) -> item, limits, message regex)
CASES = [
    # images
    ("image-zero-bytes", "image", lambda d, t: _write(t / "zero.png", b""), {}, "empty"),
    ("image-truncated-png", "image", lambda d, t: _write(t / "cut.png", cut(d / "landscape.png", 0.5)), {},
     "cannot read as image.*truncated"),
    ("image-truncated-jpeg", "image", lambda d, t: cut(d / "portrait.jpg", 0.4), {}, "cannot read as image"),
    ("image-wrong-magic", "image", lambda d, t: b"GARBAGE!" + (d / "landscape.png").read_bytes()[8:], {},
     "cannot read as image"),
    ("image-random-bytes", "image", lambda d, t: np.random.default_rng(0).bytes(5000), {}, "cannot read as image"),
    ("image-text-file", "image", lambda d, t: _write(t / "notes.png", b"just some text\n"), {}, "cannot read as image"),
    ("image-png-claims-100000x100000", "image", lambda d, t: png_claiming(100_000, 100_000), {}, "too large"),
    ("image-png-claims-9000x9000", "image", lambda d, t: png_claiming(9000, 9000), {}, "over the limit"),
    ("image-jpeg-claims-65000x65000", "image", lambda d, t: jpeg_claiming(65_000, 65_000), {}, "too large"),
    ("image-is-audio", "image", lambda d, t: d / "mono16k.wav", {}, "this is audio data, not an image"),
    ("image-is-video", "image", lambda d, t: d / "portrait8fps.mp4", {}, "this is video data, not an image"),
    ("image-over-pixel-limit", "image", lambda d, t: d / "landscape.png", {"max_pixels": 10_000}, "over the limit"),
    ("image-over-byte-limit", "image", lambda d, t: d / "landscape.png", {"max_bytes": 1000}, "over the limit"),
    ("image-missing-file", "image", lambda d, t: t / "nope.png", {}, "no such file"),
    ("image-bad-array-shape", "image", lambda d, t: np.zeros((2, 3, 4, 5), np.uint8), {}, "image array must be"),
    ("image-nan-array", "image", lambda d, t: np.full((8, 8, 3), np.nan, np.float32), {}, "NaN"),
    ("image-float-out-of-range", "image", lambda d, t: np.full((8, 8, 3), 200.0), {}, r"\[0, 1\]"),
    ("image-empty-array", "image", lambda d, t: np.zeros((0, 5, 3), np.uint8), {}, "empty array"),
    ("image-unsupported-type", "image", lambda d, t: 12345, {}, "unsupported input of type int"),
    # audio
    ("audio-zero-bytes", "audio", lambda d, t: _write(t / "zero.wav", b""), {}, "empty"),
    ("audio-truncated-wav", "audio", lambda d, t: _write(t / "cut.wav", cut(d / "mono16k.wav", 0.5)), {},
     "truncated WAV"),
    ("audio-wav-header-only", "audio", lambda d, t: (d / "mono16k.wav").read_bytes()[:44], {}, "truncated WAV"),
    ("audio-wav-claims-2GB", "audio", lambda d, t: wav_claiming(2**31 - 100), {}, "truncated WAV|over the limit"),
    ("audio-no-samples", "audio", lambda d, t: empty_wav(t / "empty.wav"), {}, "audio is empty"),
    ("audio-wrong-magic", "audio", lambda d, t: b"RIFX" + (d / "mono16k.wav").read_bytes()[4:], {},
     "cannot read as audio"),
    ("audio-random-bytes", "audio", lambda d, t: np.random.default_rng(1).bytes(5000), {}, "cannot read as audio"),
    ("audio-too-long", "audio", lambda d, t: d / "long22k.wav", {"max_audio_seconds": 5}, "over the limit of 5"),
    ("audio-array-too-long", "audio", lambda d, t: np.zeros(16_000 * 6, np.float32), {"max_audio_seconds": 5},
     "over the limit of 5"),
    ("audio-too-short", "audio", lambda d, t: write_wav(t / "blip.wav", 0.01, 16_000), {}, "too short"),
    ("audio-is-image", "audio", lambda d, t: d / "landscape.png", {}, "this is image data, not audio"),
    ("audio-video-without-sound", "audio", lambda d, t: d / "portrait8fps.mp4", {}, "no audio stream"),
    ("audio-bad-array-shape", "audio", lambda d, t: np.zeros((2, 3, 4), np.float32), {}, "audio array must be"),
    # video
    ("video-zero-bytes", "video", lambda d, t: _write(t / "zero.mp4", b""), {}, "empty"),
    ("video-truncated-mp4", "video", lambda d, t: _write(t / "cut.mp4", cut(d / "landscape12fps.mp4", 0.5)), {},
     "cannot read as video"),
    ("video-truncated-faststart-mp4", "video", lambda d, t: cut(faststart_mp4(t / "fs.mp4"), 0.8), {},
     "truncated video"),
    ("video-wrong-header", "video", lambda d, t: b"\0" * 64 + (d / "landscape12fps.mp4").read_bytes()[64:], {},
     "cannot read as video"),
    ("video-random-bytes", "video", lambda d, t: np.random.default_rng(2).bytes(5000), {}, "cannot read as video"),
    ("video-is-image", "video", lambda d, t: d / "landscape.png", {}, "this is image data, not video"),
    ("video-is-audio", "video", lambda d, t: d / "mono16k.wav", {}, "no video stream"),
    ("video-too-long", "video", lambda d, t: d / "landscape12fps.mp4", {"max_video_seconds": 2}, "over the limit of 2"),
    ("video-too-many-frames", "video", lambda d, t: d / "landscape12fps.mp4", {"max_video_frames": 10},
     "40 frames, over the limit"),
    ("video-over-pixel-limit", "video", lambda d, t: d / "landscape12fps.mp4", {"max_pixels": 5000}, "over the limit"),
    ("video-float-array", "video", lambda d, t: np.zeros((4, 8, 8, 3), np.float32), {}, "video array must be uint8"),
    ("video-no-frames-array", "video", lambda d, t: np.zeros((0, 8, 8, 3), np.uint8), {}, "empty array"),
    # depth, thermal, IMU
    ("depth-rgb-array", "depth", lambda d, t: np.zeros((8, 8, 3), np.float32), {}, "one channel"),
    ("depth-is-audio", "depth", lambda d, t: d / "mono16k.wav", {}, "this is audio data"),
    ("depth-png-claims-100000x100000", "depth", lambda d, t: png_claiming(100_000, 100_000), {}, "too large"),
    ("thermal-truncated-png", "thermal", lambda d, t: cut(d / "gray.png", 0.5), {}, "cannot read as thermal"),
    ("imu-wrong-shape", "imu", lambda d, t: np.zeros((5, 100), np.float32), {}, r"\[6, T\]"),
    ("imu-is-image", "imu", lambda d, t: d / "landscape.png", {}, "this is image data"),
    ("imu-pickled-npy", "imu", lambda d, t: pickled_npy(), {}, "cannot read as imu"),
    ("imu-too-long", "imu", lambda d, t: np.zeros((6, 5000), np.float32), {"max_imu_samples": 3000},
     "over the limit"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("modality, make, limits, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_media_error(encoder, media_dir, tmp_path, modality, make, limits, message):
    checked = ImageBindEncoder(encoder.config, encoder.model, limits=InputLimits(**limits))
    item = make(media_dir, tmp_path)
    with pytest.raises(MediaError, match=message) as error:
        checked.encode(modality, [item])
    if isinstance(item, Path):
        assert str(item) in str(error.value)  # the message names the file


def test_one_bad_item_fails_the_batch_clearly(encoder, media_dir):
    with pytest.raises(MediaError, match="bad.png"):
        encoder.encode("image", [media_dir / "landscape.png", media_dir / "bad.png"])
