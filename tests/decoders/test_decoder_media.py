"""Artifacts written as files: formats ordinary readers open, provenance inside, atomic writes."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from decoders import AudioArtifact, DecoderError, ImageArtifact, VideoArtifact, read_provenance
from decoders.media import to_uint8

META = {"modality": "x", "model_id": "model/ünïcode", "seed": 3, "conditioning_sha256": "ab" * 32,
        "guidance_scale": 7.5}


def moving_square(frames: int, height: int, width: int) -> np.ndarray:
    video = np.zeros((frames, height, width, 3), np.uint8)
    for i in range(frames):
        video[i, 4:12, 2 + 2 * i:10 + 2 * i] = (250, 40, 40)
    return video


def test_png_keeps_pixels_and_provenance(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = ImageArtifact(Image.fromarray(pixels), dict(META, modality="image")).save(tmp_path / "a.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), pixels)
        assert im.text["seed"] == "3" and im.text["model_id"] == "model/ünïcode"
    assert read_provenance(path) == dict(META, modality="image")


def test_wav_is_16_bit_pcm_clipped_with_provenance(tmp_path):
    t = np.arange(8000) / 16000
    wave = (1.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # peaks beyond full scale
    path = AudioArtifact(wave, 16000, dict(META, modality="audio")).save(tmp_path / "a.wav")
    info = sf.info(path)
    assert (info.subtype, info.samplerate, info.channels, info.frames) == ("PCM_16", 16000, 1, 8000)
    samples, _ = sf.read(path, dtype="float32")
    assert samples.max() == pytest.approx(32767 / 32768) and samples.min() == -1.0
    small = np.abs(wave) < 0.9
    assert np.abs(samples[small] - wave[small]).max() < 1e-4
    assert read_provenance(path) == dict(META, modality="audio")


def test_mp4_is_h264_with_every_frame_and_provenance(tmp_path):
    frames = moving_square(10, 32, 48)
    path = VideoArtifact(frames, 5, dict(META, modality="video")).save(tmp_path / "a.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 5
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == frames.shape
    # The square is where it was in every frame (centroid of the red pixels).
    for got, want in zip(decoded, frames):
        red = lambda x: np.argwhere((x[..., 0] > 128) & (x[..., 1] < 100)).mean(axis=0)  # noqa: E731
        assert np.abs(red(got) - red(want)).max() < 1.0
    assert read_provenance(path) == dict(META, modality="video")


def test_odd_video_sizes_are_padded_to_even(tmp_path):
    path = VideoArtifact(moving_square(3, 33, 47), 8, {}).save(tmp_path / "odd.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (48, 34)
        assert sum(1 for _ in container.decode(stream)) == 3


def test_write_is_atomic_an_old_file_survives_a_failed_write(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    ImageArtifact(Image.new("RGB", (8, 8), "red"), {"seed": 1}).save(target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ImageArtifact(Image.new("RGB", (8, 8), "blue"), {"seed": 2}).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left behind


def test_saved_files_are_readable_by_others_and_parent_folders_are_made(tmp_path):
    path = AudioArtifact(np.zeros(160, np.float32), 16000, {}).save(tmp_path / "new" / "folder" / "a.wav")
    assert path.is_file() and path.stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize("make, message", [
    (lambda: ImageArtifact(np.zeros((4, 4, 3)), {}), "must be a PIL image"),
    (lambda: AudioArtifact(np.zeros((2, 100)), 16000, {}), r"mono \[N\]"),
    (lambda: AudioArtifact(np.zeros(100), 0, {}), "sample_rate"),
    (lambda: VideoArtifact(np.zeros((2, 8, 8, 3)), 8, {}), r"uint8 \[F, H, W, 3\]"),
    (lambda: VideoArtifact(np.zeros((2, 8, 8, 3), np.uint8), 0, {}), "fps"),
])
def test_artifacts_check_their_contents(make, message):
    with pytest.raises(DecoderError, match=message):
        make()


def test_read_provenance_of_unknown_formats_and_files_without_it(tmp_path):
    with pytest.raises(DecoderError, match="no provenance reader for .txt"):
        read_provenance(tmp_path / "a.txt")
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_provenance(tmp_path / "plain.png") == {}


def test_to_uint8_rounds_and_clips():
    assert to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]
