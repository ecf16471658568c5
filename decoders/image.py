"""Image decoder: Stable Diffusion (v1.x: 77×768 conditioning; v2.x: 77×1024)."""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from decoders import _tiny
from decoders.base import Conditioning, Decoder, text_conditioning
from decoders.media import ImageArtifact, to_uint8


class ImageDecoder(Decoder):
    modality = "image"
    pipeline_class = StableDiffusionPipeline
    # The safety checker judges pictures with a CLIP image model; it is not part of this design.
    load_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @property
    def conditioning(self) -> Conditioning:
        return text_conditioning(self.pipeline)

    def _size_kwargs(self, height: int | None = None, width: int | None = None) -> tuple[dict, dict]:
        size = {"height": self._check_side("height", height),
                "width": self._check_side("width", width)}
        return size, size

    def _artifacts(self, output: Any, metas: list[dict]) -> list[ImageArtifact]:
        return [ImageArtifact(Image.fromarray(to_uint8(pixels)), meta) for pixels, meta in zip(output.images, metas)]

    @classmethod
    def _tiny_pipeline(cls, dim: int = 32, tokens: int = 77, size: int = 64, channels: tuple[int, ...] = (32, 64),
                       vae_channels: tuple[int, ...] = (16, 32, 32), text_encoder: str = "clip") -> StableDiffusionPipeline:
        """77×`dim` conditioning; `size`×`size` images from (size/4)² latents with the default VAE."""
        components = _tiny.latent_diffusion(UNet2DConditionModel, "2D", dim=dim, tokens=tokens, size=size,
                                            channels=channels, vae_channels=vae_channels, text_encoder=text_encoder)
        return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
