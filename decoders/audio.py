"""Audio decoder: AudioLDM (CLAP text embedding, 1×512 for AudioLDM-l-full; HiFi-GAN vocoder, 16 kHz)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import AudioLDMPipeline, UNet2DConditionModel

from decoders import _tiny
from decoders.base import MAX_SIZE_FACTOR, Conditioning, Decoder, DecoderError, is_number
from decoders.frozen_text import masked_mean
from decoders.media import AudioArtifact
from decoders.spectral import GriffinLimVocoder  # imported so that a folder naming it loads (see spectral.py)


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
        """CLAP's projected, L2-normalised text embedding, [B, dim]. A text encoder without a projection
        (the tiny decoder's frozen MiniLM) gives its sentence embedding instead: the mean of its token
        states over the real tokens, L2-normalised, which is what all-MiniLM-L6-v2 was trained to give
        and plays the part of CLAP's pooled, normalised embedding."""
        if hasattr(self.pipeline.text_encoder, "text_projection"):
            return self.pipeline._encode_prompt(texts, self.pipeline._execution_device, 1, False)
        tokens = self.pipeline.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = tokens.to(self.pipeline._execution_device)
        states = self.pipeline.text_encoder(**tokens).last_hidden_state
        return torch.nn.functional.normalize(masked_mean(states, tokens.attention_mask), dim=-1)

    @torch.no_grad()
    def text_mask(self, texts) -> torch.Tensor:
        """One embedding per caption: every position is real."""
        return torch.ones(len(texts), 1, dtype=torch.bool)

    @torch.no_grad()
    def token_states(self, texts: list[str], tokens: int) -> torch.Tensor:
        """The frozen text encoder's token states of `texts` before pooling, [B, tokens, dim], zero at
        padding: their sum, L2-normalised, is `encode_text` (captions of up to `tokens` tokens). What a
        pooled output projector writes (`OutputProjector`'s `pool_from`). CLAP pools through a learnt
        projection, so a real AudioLDM has no such states."""
        if hasattr(self.pipeline.text_encoder, "text_projection"):
            raise DecoderError("this audio decoder's text encoder (CLAP) pools through a projection: "
                               "a pooled projector needs the tiny decoder's frozen sentence encoder")
        batch = self.pipeline.tokenizer(list(texts), padding="max_length", max_length=tokens, truncation=True,
                                        return_tensors="pt").to(self.pipeline._execution_device)
        states = self.pipeline.text_encoder(**batch).last_hidden_state
        return states * batch.attention_mask[..., None].to(states.dtype)

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
                       channels: tuple[int, ...] = (32, 64), vae_channels: tuple[int, ...] = (16, 32),
                       text_encoder: str = "clap", vocoder: str = "hifigan", attention: bool = True
                       ) -> AudioLDMPipeline:
        """1×`dim` CLAP conditioning; `seconds` of 16 kHz audio by default, from a mel spectrogram of
        100 frames per second × `mel_bins` (halved on each side by the default VAE).

        The tiny preset's build: `text_encoder="minilm"` (the frozen MiniLM's 384-wide sentence
        embedding), `vocoder="griffinlim"` (a 256-bin linear spectrogram, see decoders/spectral.py;
        `mel_bins` is then the bin count) and `attention=False` (convolutions only, with attention
        in the middle block, which a long spectrogram makes cheap)."""
        vae = _tiny.vae(vae_channels, in_channels=1)
        scale = 2 ** (len(vae_channels) - 1)
        if text_encoder == "clap":
            tokenizer, encoder = _tiny.clap_text_encoder(dim)
        else:
            tokenizer, encoder, dim, _ = _tiny.text_encoder_pair(text_encoder, dim, 0)
        if vocoder == "hifigan":
            voc = _tiny.hifigan(mel_bins)
        elif vocoder == "griffinlim":
            voc = GriffinLimVocoder(model_in_dim=mel_bins, upsample_rates=(_tiny.HOP,))
        else:
            raise ValueError(f"vocoder must be 'hifigan' or 'griffinlim', got {vocoder!r}")
        blocks = _tiny.block_types(len(channels)) if attention else {
            "down_block_types": ("DownBlock2D",) * len(channels), "up_block_types": ("UpBlock2D",) * len(channels)}
        unet = UNet2DConditionModel(
            sample_size=round(seconds * 16000 / _tiny.HOP) // scale, in_channels=4, out_channels=4,
            block_out_channels=channels, layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
            # AudioLDM's layout: no text cross-attention (its attention layers attend to themselves);
            # the CLAP embedding enters as a class embedding, concatenated to the time embedding.
            cross_attention_dim=tuple(channels) if attention else channels[-1],
            class_embed_type="simple_projection", projection_class_embeddings_input_dim=dim,
            class_embeddings_concat=True, **blocks,
        )
        # The text embedding is unit-norm (CLAP's and MiniLM's alike): with nn.Linear's default init
        # its projection starts several times weaker than the time embedding beside it, and a
        # CPU-length run learnt to ignore it (every caption gave the same sound). Start it with
        # unit-variance outputs for a unit-norm input instead.
        torch.nn.init.normal_(unet.class_embedding.weight, std=1.0)
        torch.nn.init.zeros_(unet.class_embedding.bias)
        return AudioLDMPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=_tiny.scheduler(), vocoder=voc)
