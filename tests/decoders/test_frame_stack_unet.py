"""The tiny video UNet that stacks a clip's frames as channels (decoders/frame_stack.py): it starts from
its image UNet, sees every frame at once, and lives in a TextToVideoSD folder."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from decoders import DecoderError, ImageDecoder, VideoDecoder
from decoders.frame_stack import FrameStackUNet

FAST = {"num_inference_steps": 2, "guidance_scale": 4.0}


def _inputs(frames: int = 4):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, frames, 8, 8, generator=g)  # [B, C, F, h, w], TextToVideoSD's layout
    text = torch.randn(2, 77, 32, generator=g)
    return latents, text, torch.tensor([10, 500])


def test_grown_unet_starts_as_the_image_unet_on_the_mean_frame():
    image = ImageDecoder.tiny(seed=1).pipeline.unet
    video = FrameStackUNet.grow(image, num_frames=4)
    assert video.config.in_channels == 4 and video.unet.config.in_channels == 16
    latents, text, t = _inputs()
    with torch.no_grad():
        got = video(latents, t, encoder_hidden_states=text).sample
        want = image(latents.mean(2), t, encoder_hidden_states=text).sample
    assert got.shape == latents.shape
    for f in range(4):
        torch.testing.assert_close(got[:, :, f], want, atol=1e-4, rtol=1e-4)
    no_attention = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                        cross_attention_dim=32, norm_num_groups=8,
                                        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(ValueError, match="layers do not match"):
        FrameStackUNet.grow(no_attention, num_frames=4)


def test_every_frame_reads_every_other_frame():
    """What ZeroScope's UNet3D gives only through its temporal layers: a change to the last frame moves
    the first frame's output, and reversing the clip does not just reverse the output."""
    video = FrameStackUNet(num_frames=4, block_out_channels=(32, 64), cross_attention_dim=32)
    latents, text, t = _inputs()
    changed = latents.clone()
    changed[:, :, 3] += 1.0
    with torch.no_grad():
        out = video(latents, t, encoder_hidden_states=text).sample
        moved = video(changed, t, encoder_hidden_states=text).sample
        backward = video(latents.flip(2), t, encoder_hidden_states=text).sample.flip(2)
    assert (moved[:, :, 0] - out[:, :, 0]).abs().max() > 1e-3
    assert (backward - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="exactly 4 frames"):
        video(latents[:, :, :3], t, encoder_hidden_states=text)


def test_frame_stack_video_decoder_folder_round_trip(tmp_path):
    decoder = VideoDecoder.tiny(seed=0, stacked_frames=8)
    emb = decoder.encode_text(["a red circle moving left"])
    clip = decoder.decode(emb, seeds=[0], **FAST)[0]  # the clip length defaults to the UNet's
    assert clip.frames.shape == (8, 64, 64, 3)
    decoder.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["decoders.frame_stack", "FrameStackUNet"]
    loaded = VideoDecoder.from_pretrained(tmp_path)
    assert isinstance(loaded.pipeline.unet, FrameStackUNet) and loaded.pipeline.unet.config.num_frames == 8
    again = loaded.decode(emb, seeds=[0], num_frames=8, **FAST)[0]
    assert (again.frames.astype(int) - clip.frames.astype(int)).__abs__().max() <= 1
    with pytest.raises(DecoderError, match="num_frames must be 8 for this decoder"):
        loaded.decode(emb, seeds=[0], num_frames=16, **FAST)
