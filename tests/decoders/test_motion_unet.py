"""The video UNet with motion modules (decoders/motion.py): it starts as its image UNet on every frame,
knows which frame is which once its motion modules are trained, and lives in a TextToVideoSD folder."""

from __future__ import annotations

import json

import pytest
import torch

from decoders import DecoderError, ImageDecoder, VideoDecoder
from decoders.motion import MotionUNet

FAST = {"num_inference_steps": 2, "guidance_scale": 4.0}


def _inputs(frames: int = 4):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, frames, 8, 8, generator=g)  # [B, C, F, h, w], TextToVideoSD's layout
    text = torch.randn(2, 77, 32, generator=g)  # one conditioning per clip
    return latents, text, torch.tensor([10, 500])


def test_grown_unet_starts_as_the_image_unet_on_every_frame():
    image = ImageDecoder.tiny(seed=1).pipeline.unet
    video = MotionUNet.grow(image)
    latents, text, t = _inputs()
    with torch.no_grad():
        got = video(latents, t, encoder_hidden_states=text).sample
        frames = latents.movedim(2, 1).flatten(0, 1)  # [B*F, C, h, w]
        want = image(frames, t.repeat_interleave(4), encoder_hidden_states=text.repeat_interleave(4, 0)).sample
    assert got.shape == latents.shape
    torch.testing.assert_close(got.movedim(2, 1).flatten(0, 1), want, atol=1e-4, rtol=1e-4)


def test_trained_motion_modules_tell_the_frames_apart():
    """What ZeroScope's UNet3D lacks here: with the motion modules switched on, reversing the clip does not
    just reverse the output, because every frame carries its position."""
    video = MotionUNet.grow(ImageDecoder.tiny(seed=1).pipeline.unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in video.modules():
            if type(module).__name__ == "AnimateDiffTransformer3D":
                module.proj_out.weight.copy_(torch.randn(module.proj_out.weight.shape, generator=g) * 0.5)
        latents, text, t = _inputs()
        forward = video(latents, t, encoder_hidden_states=text).sample
        backward = video(latents.flip(2), t, encoder_hidden_states=text).sample.flip(2)
    assert (forward - backward).abs().max() > 1e-2


def test_motion_video_decoder_folder_round_trip(tmp_path):
    decoder = VideoDecoder.tiny(seed=0, motion=True)
    emb = decoder.encode_text(["a red circle moving left"])
    clip = decoder.decode(emb, seeds=[0], num_frames=8, **FAST)[0]
    assert clip.frames.shape == (8, 64, 64, 3)
    decoder.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["unet"] == ["decoders.motion", "MotionUNet"]
    loaded = VideoDecoder.from_pretrained(tmp_path)
    assert isinstance(loaded.pipeline.unet, MotionUNet)
    again = loaded.decode(emb, seeds=[0], num_frames=8, **FAST)[0]
    assert (again.frames.astype(int) - clip.frames.astype(int)).__abs__().max() <= 1
    # its frame positions end at 32 (the motion modules' table): asked for more, a clear error
    with pytest.raises(DecoderError, match="num_frames must be an int from 1 to 32"):
        loaded.decode(emb, seeds=[0], num_frames=33, **FAST)
