"""A video UNet whose temporal layers know which frame they are at, in the TextToVideoSD pipeline.

ModelScope/ZeroScope's `UNet3DConditionModel` gives its temporal attention no frame position, so
every frame looks the same to it and only the temporal convolutions' padding tells first from last.
The tiny video decoder built on it drew the same motion for all four directions of a seed: it could
not turn "moving left" into "frame k sits further left". AnimateDiff's motion modules (diffusers'
`UNetMotionModel`) add sinusoidal frame positions to the temporal attention, and the model grows
from a trained image UNet (`UNetMotionModel.from_unet2d`), which already knows colours and shapes.

`MotionUNet` is that model with the one difference TextToVideoSD needs: the pipeline passes one
conditioning per clip (`[batch, tokens, dim]`), AnimateDiff's pipeline one per frame, so it repeats
the conditioning over the frames. Latents are [batch, channels, frames, height, width] in both. It
saves and loads with the pipeline folder (model_index.json names this module); real ZeroScope
checkpoints keep their UNet3DConditionModel.
"""

from __future__ import annotations

import torch
# ModelMixin is named here because diffusers finds how to load a component of a custom module by
# looking its base classes up in that module's namespace
from diffusers import ModelMixin, MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: F401


class MotionUNet(UNetMotionModel):
    """UNetMotionModel taking TextToVideoSD's per-clip conditioning (see the module docstring)."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                *args, **kwargs):
        frames = sample.shape[2]
        if frames > self.config.motion_max_seq_length:
            raise ValueError(f"this video UNet's frame positions go up to {self.config.motion_max_seq_length} "
                             f"frames, got {frames}")
        if encoder_hidden_states is not None and encoder_hidden_states.shape[0] == sample.shape[0]:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    @classmethod
    def grow(cls, image_unet: UNet2DConditionModel, *, max_frames: int = 32, heads: int = 8) -> "MotionUNet":
        """The image UNet's layers (copied) with one motion module after each of its blocks' layers.

        Each motion module's output projection starts at zero, so the new UNet begins as the image UNet
        applied to every frame and learns motion from there (AnimateDiff zero-initialises it too)."""
        config = image_unet.config
        adapter = MotionAdapter(block_out_channels=tuple(config.block_out_channels),
                                motion_layers_per_block=config.layers_per_block, motion_num_attention_heads=heads,
                                motion_norm_num_groups=config.norm_num_groups, motion_max_seq_length=max_frames,
                                use_motion_mid_block=True)
        unet = cls.from_unet2d(image_unet, adapter)
        with torch.no_grad():
            for module in unet.modules():
                if type(module).__name__ == "AnimateDiffTransformer3D":
                    module.proj_out.weight.zero_()
                    module.proj_out.bias.zero_()
        return unet
