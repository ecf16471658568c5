"""A tiny video UNet that sees a whole clip at once: its frames stacked as channels of one image.

ZeroScope's `UNet3DConditionModel` runs its spatial layers on each frame alone and links the frames
with temporal convolutions and a temporal attention that gets no frame position. Trained on the toy
world's 8-frame clips on a CPU, it drew the right colour and shape but the same motion for every
direction of a seed: nothing in it could turn "moving left" into "frame k sits further left" in
the steps a CPU affords. `FrameStackUNet` is one `UNet2DConditionModel` whose input and output
channels are the clip's frames side by side ([batch, channels, frames, h, w] in and out, as
TextToVideoSD passes them): every convolution and every cross-attention to the caption sees all
frames and knows which is which from the channel it reads. The price is a fixed clip length (the
`num_frames` it was built for) and a model that does not grow to long clips; it is for small clips
on small machines (see README, "The video decoder"). Real ZeroScope checkpoints keep their UNet3D.

It saves and loads with the pipeline folder (model_index.json names this module).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from decoders._tiny import block_types


class FrameStackUNet(ModelMixin, ConfigMixin):
    """UNet2DConditionModel over [batch, channels x frames, h, w]; see the module docstring."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_frames: int = 8, in_channels: int = 4, sample_size: int = 16,
                 block_out_channels: tuple[int, ...] = (64, 128), layers_per_block: int = 1,
                 cross_attention_dim: int = 384, attention_head_dim: int = 8, norm_num_groups: int = 8):
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels * num_frames, out_channels=in_channels * num_frames,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups, **block_types(len(block_out_channels)))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                return_dict: bool = True, **kwargs):
        batch, channels, frames, height, width = sample.shape
        if frames != self.config.num_frames:
            raise ValueError(f"this video UNet draws clips of exactly {self.config.num_frames} frames "
                             f"(its frames are stacked as channels), got {frames}")
        stacked = sample.movedim(2, 1).reshape(batch, frames * channels, height, width)
        out = self.unet(stacked, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        out = out.reshape(batch, frames, channels, height, width).movedim(1, 2)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    @classmethod
    def grow(cls, image_unet: UNet2DConditionModel, num_frames: int) -> "FrameStackUNet":
        """Start from a trained image UNet of the same blocks: every inner layer copied; the first
        convolution reads the mean of the frames and the last writes its output to every frame, so at
        step 0 each frame gets the image UNet's prediction for the clip's average frame."""
        config = image_unet.config
        unet = cls(num_frames=num_frames, in_channels=config.in_channels, sample_size=config.sample_size,
                   block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
                   cross_attention_dim=config.cross_attention_dim, attention_head_dim=config.attention_head_dim,
                   norm_num_groups=config.norm_num_groups)
        weights = dict(image_unet.state_dict())
        weights["conv_in.weight"] = weights["conv_in.weight"].repeat(1, num_frames, 1, 1) / num_frames
        for name in ("conv_out.weight", "conv_out.bias"):
            weights[name] = weights[name].repeat(num_frames, *[1] * (weights[name].dim() - 1))
        try:
            unet.unet.load_state_dict(weights)
        except RuntimeError as e:
            raise ValueError(f"the image UNet's layers do not match a frame-stack UNet of its config: {e}") from e
        return unet
