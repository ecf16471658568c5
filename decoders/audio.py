"""Audio decoder: AudioLDM (CLAP text embedding, 1×512 for AudioLDM-l-full; HiFi-GAN vocoder, 16 kHz)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import AudioLDMPipeline, UNet2DConditionModel

from decoders import _tiny
from decoders.base import MAX_SIZE_FACTOR, Conditioning, Decoder, DecoderError, is_number
from decoders.media import AudioArtifact


class AudioDecoder(Decoder):
    modality = "audio"
    pipeline_class = AudioLDMPipeline

    @property
    def conditioning(self) -> Conditioning:
        """AudioLDM conditions on one CLAP embedding, fed through the UNet's class-embedding projection."""
        return Conditioning(tokens=1, dim=int(self.pipeline.unet.config.projection_class_embeddings_input_dim))

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vocoder.config.sampling_rate)

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame: the vocoder's upsampling (160 for AudioLDM, 10 ms at 16 kHz)."""
        return int(np.prod(self.pipeline.vocoder.config.upsample_rates))

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        """CLAP's projected, L2-normalised text embedding, [B, dim]."""
        return self.pipeline._encode_prompt(texts, self.pipeline._execution_device, 1, False)

    def _pipeline_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds[:, 0, :]  # AudioLDM takes prompt_embeds as [B, dim]

    def _size_kwargs(self, audio_length_in_s: float | None = None) -> tuple[dict, dict]:
        hop_s = self.hop / self.sample_rate
        native = self._native_side() * hop_s  # 5.12 s for AudioLDM
        shortest, longest = hop_s * int(self.pipeline.vae_scale_factor), MAX_SIZE_FACTOR * native
        seconds = native if audio_length_in_s is None else audio_length_in_s
        if not is_number(seconds) or not math.isfinite(seconds) or not shortest <= seconds <= longest:
            raise DecoderError(f"audio_length_in_s must be a number of seconds from {shortest:g} to {longest:g}, "
                               f"got {audio_length_in_s!r}")
        # The pipeline floors seconds / hop in floating point (0.29 s came out as 0.28 s): ask it for
        # half a mel frame more than needed, and cut the waveform to length here.
        frames = math.ceil(round(seconds * self.sample_rate) / self.hop)
        return ({"audio_length_in_s": (frames + 0.5) * hop_s},
                {"audio_length_in_s": float(seconds), "sample_rate": self.sample_rate})

    def _artifacts(self, output: Any, metas: list[dict]) -> list[AudioArtifact]:
        return [AudioArtifact(waveform[:round(meta["audio_length_in_s"] * self.sample_rate)], self.sample_rate, meta)
                for waveform, meta in zip(output.audios, metas)]

    @classmethod
    def _tiny_pipeline(cls, dim: int = 32, seconds: float = 1.0, mel_bins: int = 16,
                       channels: tuple[int, ...] = (32, 64), vae_channels: tuple[int, ...] = (16, 32)
                       ) -> AudioLDMPipeline:
        """1×`dim` CLAP conditioning; `seconds` of 16 kHz audio by default, from a mel spectrogram of
        100 frames per second × `mel_bins` (halved on each side by the default VAE)."""
        vae = _tiny.vae(vae_channels, in_channels=1)
        scale = 2 ** (len(vae_channels) - 1)
        tokenizer, text_encoder = _tiny.clap_text_encoder(dim)
        unet = UNet2DConditionModel(
            sample_size=round(seconds * 16000 / _tiny.HOP) // scale, in_channels=4, out_channels=4,
            block_out_channels=channels, layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
            # AudioLDM's layout: no text cross-attention (its attention layers attend to themselves);
            # the CLAP embedding enters as a class embedding, concatenated to the time embedding.
            cross_attention_dim=tuple(channels), class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=dim, class_embeddings_concat=True,
            **_tiny.block_types(len(channels)),
        )
        return AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=_tiny.scheduler(), vocoder=_tiny.hifigan(mel_bins))
