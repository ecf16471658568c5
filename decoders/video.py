"""Video decoder: TextToVideoSD (ModelScope / ZeroScope v2: 77×1024 conditioning)."""

from __future__ import annotations

from typing import Any

from diffusers import TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel

from decoders import _tiny
from decoders.base import Conditioning, Decoder, DecoderError, is_int, text_conditioning
from decoders.frame_stack import FrameStackUNet  # imported so that a folder naming it loads (see frame_stack.py)
from decoders.media import VideoArtifact, to_uint8

DEFAULT_FRAMES = 16  # the pipeline's own default
MAX_FRAMES = 64
DEFAULT_FPS = 8  # ZeroScope's clips are 8 fps


class VideoDecoder(Decoder):
    modality = "video"
    pipeline_class = TextToVideoSDPipeline
    # The pipeline steps all frames of a batch as one scheduler batch, so a per-artifact generator
    # list cannot feed a scheduler that draws fresh noise each step (euler_a): deterministic ones only.
    scheduler_names = ("ddim", "pndm", "lms", "euler", "dpm++", "unipc")

    @property
    def conditioning(self) -> Conditioning:
        return text_conditioning(self.pipeline)

    def _size_kwargs(self, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                     fps: int = DEFAULT_FPS) -> tuple[dict, dict]:
        fixed = self.pipeline.unet.config.get("num_frames")  # a FrameStackUNet draws one clip length
        if num_frames is None:
            num_frames = fixed or DEFAULT_FRAMES
        if fixed is not None and num_frames != fixed:
            raise DecoderError(f"num_frames must be {fixed} for this decoder (its UNet stacks the frames of a "
                               f"clip as channels), got {num_frames!r}")
        if not is_int(num_frames) or not 1 <= num_frames <= MAX_FRAMES:
            raise DecoderError(f"num_frames must be an int from 1 to {MAX_FRAMES}, got {num_frames!r}")
        if not is_int(fps) or not 1 <= fps <= 60:
            raise DecoderError(f"fps must be an int from 1 to 60, got {fps!r}")
        size = {"num_frames": int(num_frames),
                "height": self._check_side("height", height),
                "width": self._check_side("width", width)}
        return size, {**size, "fps": int(fps)}

    def _artifacts(self, output: Any, metas: list[dict]) -> list[VideoArtifact]:
        return [VideoArtifact(to_uint8(frames), meta["fps"], meta) for frames, meta in zip(output.frames, metas)]

    @classmethod
    def _tiny_pipeline(cls, dim: int = 32, tokens: int = 77, size: int = 64, channels: tuple[int, ...] = (32, 64),
                       vae_channels: tuple[int, ...] = (16, 32, 32, 32), text_encoder: str = "clip",
                       stacked_frames: int | None = None) -> TextToVideoSDPipeline:
        """77×`dim` conditioning; `size`×`size` frames from (size/8)² latents (ZeroScope's VAE scale) by default.
        `stacked_frames`: a `FrameStackUNet` for clips of that many frames (decoders/frame_stack.py) in
        place of ZeroScope's UNet3DConditionModel."""
        unet_class, kind = (UNet3DConditionModel, "3D") if stacked_frames is None else (UNet2DConditionModel, "2D")
        components = _tiny.latent_diffusion(unet_class, kind, dim=dim, tokens=tokens, size=size,
                                            channels=channels, vae_channels=vae_channels, text_encoder=text_encoder)
        if stacked_frames is not None:  # the 2D UNet built above, over the stacked frames
            components["unet"] = FrameStackUNet.grow(components["unet"], stacked_frames)
        return TextToVideoSDPipeline(**components)
