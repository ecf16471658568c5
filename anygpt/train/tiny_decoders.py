"""Train the tiny diffusion decoders on the toy world (real diffusers classes, CPU-sized).

Latent diffusion as Stable Diffusion does it, scaled down:
1. a KL autoencoder (64x64 RGB <-> 16x16x4 latents), shared by the image and video decoders
   (ZeroScope, too, decodes frame by frame with an image VAE);
2. the image decoder: UNet2DConditionModel + its small CLIP text encoder, trained together
   with the epsilon-prediction loss, captions dropped 10% of the time for guidance;
3. the video decoder: UNet3DConditionModel on the frame latents, the same way;
4. the audio decoder: a mel-spectrogram VAE, a UNet conditioned on the CLAP text projection,
   and a HiFi-GAN vocoder trained on a multi-resolution spectral loss.
Each writes a diffusers folder that `decoders.*Decoder.from_pretrained` loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from anygpt.data import toyworld as tw
from anygpt.data.manifest import read_manifest
from anygpt.train.loop import LoopSettings, console, resolve_device, train
from decoders import ImageDecoder, VideoDecoder

CAPTION_DROPOUT = 0.1


def load_rows(data: str | Path, modality: str, limit: int | None = None) -> list[dict]:
    rows = [r for r in read_manifest(data, check_files=True) if r["modality"] == modality]
    return rows[:limit] if limit else rows


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1
    return x.movedim(-1, -3)


# -- 1. the autoencoder ----------------------------------------------------------------------------
def train_vae(vae: AutoencoderKL, pixels: torch.Tensor, out: Path, *, steps: int, batch_size: int, seed: int,
              max_steps: int | None = None, device: str = "auto") -> dict:
    """Reconstruction (L1 + MSE) with a light KL term, then set `scaling_factor` so latents have unit std."""
    def batch_fn(step: int) -> torch.Tensor:
        idx = np.random.default_rng([seed, step]).choice(len(pixels), batch_size, replace=False)
        return pixels[torch.from_numpy(idx)]

    def loss_fn(x: torch.Tensor):
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        return rec + 1e-3 * kl, {"rec": rec.item()}

    vae.requires_grad_(True)
    summary = train("vae", vae, batch_fn, loss_fn, out / "vae-run",
                    LoopSettings(steps=steps, lr=2e-3, warmup=50, save_every=200, seed=seed, max_steps=max_steps,
                                 device=device))
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, min(len(pixels), 2048), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return summary


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> scaled latents [N, 4, h, w] (posterior means)."""
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) \
        * vae.config.scaling_factor


# -- 2/3. a text-conditioned UNet (image or video) -------------------------------------------------
def train_text_unet(name: str, pipeline, latents: torch.Tensor, captions: list[str], out: Path, *, steps: int,
                    batch_size: int, seed: int, lr: float = 1e-3, max_steps: int | None = None,
                    device: str = "auto") -> dict:
    """Epsilon-prediction training of `pipeline.unet` and `pipeline.text_encoder` together.

    `latents` are [N, C, h, w] for images and [N, C, F, h, w] for video (the UNet3D layout).
    """
    tokenizer, text_encoder, unet = pipeline.tokenizer, pipeline.text_encoder, pipeline.unet
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    parts = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).requires_grad_(True)

    def batch_fn(step: int):
        rng = np.random.default_rng([seed, step])
        idx = torch.from_numpy(rng.choice(len(latents), batch_size, replace=False))
        ids = tokens[idx].clone()
        ids[torch.from_numpy(rng.random(batch_size) < CAPTION_DROPOUT)] = empty[0]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        return latents[idx], ids, noise, t

    def loss_fn(batch):
        x0, ids, noise, t = batch
        cond = text_encoder(ids)[0]
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred, noise), {}

    summary = train(name, parts, batch_fn, loss_fn, out / f"{name}-run",
                    LoopSettings(steps=steps, lr=lr, warmup=100, save_every=200, seed=seed, max_steps=max_steps,
                                 device=device))
    parts.requires_grad_(False).eval()
    return summary


def train_tiny_image_and_video(data: str | Path, out: str | Path, *, vae_steps: int = 1500,
                               image_steps: int = 3000, video_steps: int = 2000, batch_size: int = 32,
                               video_batch_size: int = 8, seed: int = 0, max_steps: int | None = None,
                               parts: tuple[str, ...] = ("image", "video"), device: str = "auto") -> dict:
    """Train the shared VAE, then the image and/or the video decoder; writes out/image and out/video.

    The VAE run resumes from its checkpoint, so two processes can train `parts=("image",)` and
    `parts=("video",)` side by side once it has finished."""
    out = Path(out)
    image_rows, video_rows = load_rows(data, "image"), load_rows(data, "video")
    console.print(f"loading {len(image_rows)} images and {len(video_rows)} videos")
    images = to_pixels(np.stack([tw.load_image(r["path"]) for r in image_rows]))
    videos = to_pixels(np.stack([tw.load_video(r["path"]) for r in video_rows]))  # [N, F, 3, H, W]
    image_dec = ImageDecoder.tiny(seed=seed)
    # The video decoder shares the image VAE (16x16 latents for 64x64 frames).
    video_dec = VideoDecoder.tiny(seed=seed, vae_channels=tuple(image_dec.pipeline.vae.config.block_out_channels))
    summaries = {}

    vae = image_dec.pipeline.vae
    frames = videos[:, ::2].flatten(0, 1)  # every other frame: enough variety, half the cost
    summaries["vae"] = train_vae(vae, torch.cat([images, frames]), out, steps=vae_steps, batch_size=batch_size,
                                 seed=seed, max_steps=max_steps, device=device)
    video_dec.pipeline.vae.load_state_dict(vae.state_dict())
    video_dec.pipeline.vae.register_to_config(scaling_factor=vae.config.scaling_factor)

    if "image" in parts:
        summaries["image"] = train_text_unet("image-unet", image_dec.pipeline, encode_latents(vae, images),
                                             [r["caption"] for r in image_rows], out, steps=image_steps,
                                             batch_size=batch_size, seed=seed, max_steps=max_steps, device=device)
        image_dec.save_pretrained(out / "image")
    if "video" not in parts:
        return summaries

    n, f = videos.shape[:2]
    video_latents = encode_latents(vae, videos.flatten(0, 1)).unflatten(0, (n, f)).movedim(1, 2)  # [N, C, F, h, w]
    summaries["video"] = train_text_unet("video-unet", video_dec.pipeline, video_latents,
                                         [r["caption"] for r in video_rows], out, steps=video_steps,
                                         batch_size=video_batch_size, seed=seed, max_steps=max_steps, device=device)
    video_dec.save_pretrained(out / "video")
    return summaries


# -- 4. the audio decoder ------------------------------------------------------------------------
AUDIO_SECONDS = 2.0  # every toy clip fits; shorter ones are padded with silence
MEL_BINS = 32


def pipe_mel_bins(decoder) -> int:
    """The mel bins the decoder's vocoder reads."""
    return decoder.pipeline.vocoder.config.model_in_dim


class LogMel(torch.nn.Module):
    """The spectrogram the tiny AudioLDM works in: AudioLDM's STFT (1024/160 at 16 kHz), log-compressed
    and scaled to about [-1, 1]. The VAE encodes it, the vocoder inverts it."""

    def __init__(self, mel_bins: int = MEL_BINS, sample_rate: int = tw.SAMPLE_RATE):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=1024, hop_length=160,
                                                        n_mels=mel_bins, f_min=0.0, f_max=sample_rate / 2,
                                                        power=1.0, center=True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, S // 160, mel_bins]
        frames = wave.shape[-1] // 160
        return ((torch.log(self.mel(wave).clamp(min=1e-5)) + 5.0) / 5.0)[..., :frames].transpose(-1, -2)


def _stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss (spectral convergence + log magnitude), as HiFi-GAN fine-tuning uses."""
    loss = 0.0
    for n_fft, hop in ((256, 64), (512, 128), (1024, 256)):
        window = torch.hann_window(n_fft, device=pred.device)
        p = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-6)
        t = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-6)
        loss = loss + torch.linalg.norm(t - p) / torch.linalg.norm(t) + F.l1_loss(p.log(), t.log())
    return loss / 3


def train_tiny_audio(data: str | Path, out: str | Path, *, vae_steps: int = 600, vocoder_steps: int = 1500,
                     unet_steps: int = 2500, batch_size: int = 16, seed: int = 0, max_steps: int | None = None,
                     device: str = "auto", parts: tuple[str, ...] = ("vae", "vocoder", "unet"),
                     init: str | Path | None = None) -> dict:
    """Train the tiny AudioLDM: mel VAE, HiFi-GAN vocoder, and the CLAP-conditioned UNet; writes out/audio.

    `init` starts from a trained decoder folder and `parts` picks what to (re)train, e.g. a longer
    vocoder run on top of a shipped decoder: parts=("vocoder",), init="anygpt:tiny/audio".
    (The UNet's latents come from the VAE: retraining the VAE means retraining the UNet.)"""
    from anygpt.config import resolve_path
    from decoders import AudioDecoder

    unknown = set(parts) - {"vae", "vocoder", "unet"}
    if unknown or not parts:
        raise ValueError(f"parts must be some of vae, vocoder, unet; got {sorted(parts)}")
    if init is None and set(parts) != {"vae", "vocoder", "unet"}:
        raise ValueError("training only some parts needs `init`, a trained decoder folder to start from")

    out = Path(out)
    rows = load_rows(data, "audio")
    length = int(AUDIO_SECONDS * tw.SAMPLE_RATE)
    waves = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        wave, sr = tw.load_audio(r["path"])
        if sr != tw.SAMPLE_RATE:
            raise ValueError(f"{r['path']}: expected {tw.SAMPLE_RATE} Hz audio, got {sr}")
        waves[i, :min(length, len(wave))] = torch.from_numpy(wave[:length])
    if init is None:
        dec = AudioDecoder.tiny(seed=seed, mel_bins=MEL_BINS, seconds=AUDIO_SECONDS, vae_channels=(16, 32, 32))
    else:
        dec = AudioDecoder.from_pretrained(resolve_path(str(init)), torch_dtype=torch.float32)
    pipe, to_mel = dec.pipeline, LogMel(pipe_mel_bins(dec))
    with torch.no_grad():
        mels = torch.cat([to_mel(waves[i:i + 256]) for i in range(0, len(waves), 256)])  # [N, T, M]
    summaries = {}
    if "vae" in parts:
        summaries["vae"] = train_vae(pipe.vae, mels[:, None], out / "audio-vae", steps=vae_steps,
                                     batch_size=batch_size, seed=seed, max_steps=max_steps, device=device)

    # The vocoder learns mel -> waveform on random 0.32 s windows.
    vocoder, frames = pipe.vocoder, 32

    def vocoder_batch(step: int):
        rng = np.random.default_rng([seed, step])
        idx = rng.choice(len(waves), batch_size, replace=False)
        start = rng.integers(0, mels.shape[1] - frames, size=batch_size)
        mel = torch.stack([mels[i, s:s + frames] for i, s in zip(idx, start)])
        wave = torch.stack([waves[i, s * 160:(s + frames) * 160] for i, s in zip(idx, start)])
        return mel, wave

    def vocoder_loss(batch):
        mel, wave = batch
        pred = vocoder(mel)
        spec = _stft_loss(pred, wave)
        mel_l1 = F.l1_loss(to_mel(pred), to_mel(wave))
        return spec + mel_l1, {"stft": spec.item(), "mel": mel_l1.item()}

    if "vocoder" in parts:
        vocoder.requires_grad_(True)
        to_mel.to(resolve_device(device))
        # float32 throughout: the bfloat16-autocast run of the shipped recipe stalled at a near-silent
        # output (spectral convergence ~1); the float32 fine-tune recovers (cause not fully established)
        summaries["vocoder"] = train("vocoder", vocoder, vocoder_batch, vocoder_loss, out / "audio-vocoder",
                                     LoopSettings(steps=vocoder_steps, lr=2e-3 if init is None else 1e-3, warmup=50,
                                                  save_every=200, seed=seed, max_steps=max_steps, device=device,
                                                  amp=False))
        vocoder.requires_grad_(False).eval()
        to_mel.to("cpu")
    if "unet" not in parts:
        dec.save_pretrained(out / "audio")
        return summaries

    # The UNet reads the CLAP text projection (L2-normalised, as AudioLDM computes it) as a class embedding.
    latents = encode_latents(pipe.vae, mels[:, None])
    tokenizer, text_encoder, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    tokens = tokenizer([r["caption"] for r in rows], padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    parts = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).requires_grad_(True)

    def unet_batch(step: int):
        rng = np.random.default_rng([seed, step])
        idx = torch.from_numpy(rng.choice(len(latents), batch_size, replace=False))
        ids, mask = tokens.input_ids[idx].clone(), tokens.attention_mask[idx].clone()
        drop = torch.from_numpy(rng.random(batch_size) < CAPTION_DROPOUT)
        ids[drop], mask[drop] = empty.input_ids[0], empty.attention_mask[0]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        return latents[idx], ids, mask, noise, t

    def unet_loss(batch):
        x0, ids, mask, noise, t = batch
        cond = F.normalize(text_encoder(ids, attention_mask=mask).text_embeds, dim=-1)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=None, class_labels=cond).sample
        return F.mse_loss(pred, noise), {}

    summaries["unet"] = train("audio-unet", parts, unet_batch, unet_loss, out / "audio-unet",
                              LoopSettings(steps=unet_steps, lr=1e-3, warmup=100, save_every=200, seed=seed,
                                           max_steps=max_steps, device=device))
    parts.requires_grad_(False).eval()
    dec.save_pretrained(out / "audio")
    return summaries
