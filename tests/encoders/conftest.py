"""Fixtures for the encoder tests: media files written once per session, one tiny encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoder_media import moving_square_frames, pattern_image, write_mp4, write_wav
from PIL import Image

from encoders import ImageBindEncoder


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    Image.fromarray(pattern_image(320, 240, 0)).save(d / "landscape.png")
    Image.fromarray(pattern_image(200, 300, 1)).save(d / "portrait.jpg", quality=90)
    Image.fromarray(pattern_image(100, 60, 2, channels=4)).save(d / "small_rgba.png")  # upscaled
    Image.fromarray(pattern_image(90, 70, 3)[..., 0]).save(d / "gray.png")
    write_wav(d / "mono16k.wav", 3.5, 16_000)  # overlapping clips
    write_wav(d / "stereo44k.wav", 2.5, 44_100, channels=2, seed=1)  # resampling, 2 channels
    write_wav(d / "short16k.wav", 1.2, 16_000, seed=2)  # shorter than a clip: zero padding
    write_wav(d / "long22k.wav", 9.0, 22_050, seed=3)  # clips apart
    write_mp4(d / "landscape12fps.mp4", moving_square_frames(40, 160, 120), fps=12)
    write_mp4(d / "portrait8fps.mp4", moving_square_frames(13, 96, 128, seed=5), fps=8)
    write_mp4(d / "odd25fps.mp4", moving_square_frames(80, 250, 150, seed=7), fps=25)
    return d


@pytest.fixture(scope="session")
def encoder() -> ImageBindEncoder:
    return ImageBindEncoder.tiny(seed=0)
