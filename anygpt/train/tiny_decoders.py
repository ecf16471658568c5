"""Train the tiny diffusion decoders on the toy world (real diffusers classes, CPU-sized).

Latent diffusion as Stable Diffusion does it, scaled down:
1. a KL autoencoder (64x64 RGB <-> 16x16x4 latents), shared by the image and video decoders
   (ZeroScope, too, decodes frame by frame with an image VAE);
2. the image decoder: UNet2DConditionModel cross-attending to the frozen, pretrained MiniLM's token
   states (as SD's UNet does to its frozen CLIP's), trained with the epsilon-prediction loss on
   cached latents and cached text states, captions dropped 10% of the time for guidance, EMA weights;
3. the video decoder on the frame latents, the same way, grown from the trained image UNet (as
   ModelScope and ZeroScope grew from Stable Diffusion): either ZeroScope's UNet3DConditionModel,
   its spatial layers copied and its temporal layers starting as the identity, or (what the tiny
   preset ships) a FrameStackUNet, one 2D UNet over the clip's frames stacked as channels
   (decoders/frame_stack.py);
4. the audio decoder: a linear-spectrogram VAE and a UNet conditioned on the frozen MiniLM's
   sentence embedding (AudioLDM's CLAP slot); Griffin-Lim makes the wave (decoders/spectral.py).
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
from anygpt.train.loop import LoopSettings, console, train
from decoders import ImageDecoder, VideoDecoder
from decoders.frame_stack import FrameStackUNet

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
              max_steps: int | None = None, device: str = "auto", crop: int | None = None) -> dict:
    """Reconstruction (L1 + MSE) with a light KL term, then set `scaling_factor` so latents have unit std.

    `crop` trains on random windows of that many rows (dim -2: a spectrogram's frames): the VAE is
    convolutional, and a 64-frame window of a 200-frame spectrogram makes a step about 6x cheaper."""
    def batch_fn(step: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, step])
        x = pixels[torch.from_numpy(rng.choice(len(pixels), batch_size, replace=False))]
        if crop is None or crop >= x.shape[-2]:
            return x
        starts = rng.integers(0, x.shape[-2] - crop + 1, batch_size)
        return torch.stack([row[..., s:s + crop, :] for row, s in zip(x, starts)])

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


def train_vae_decoder(vae: AutoencoderKL, pixels: torch.Tensor, out: Path, *, steps: int, batch_size: int,
                      seed: int, max_steps: int | None = None, device: str = "auto", loud_weight: float = 0.0) -> dict:
    """Fit the VAE's decoder alone, at full size, to the frozen encoder's latents of `pixels`.

    A VAE trained on windows (`train_vae(crop=...)`) decodes a whole spectrogram badly: its GroupNorms
    take their statistics over the whole input, and a 2-s spectrogram (with its trailing silence) has
    others than a 0.64-s window (held-out sounds: mean abs error 0.42 on the [-1, 1] scale, 0.04 window
    by window). The encoder is kept, so the latents the UNet learns are the same ones; the posteriors
    are computed once.

    `loud_weight`: each element's error counts 1 + loud_weight * max(target, 0) times. On a log
    spectrogram most of the picture is quiet background, and a mean over it lets the decoder smear
    the loud line of a tone: an error of 0.13 on the [-1, 1] scale halves the tone's amplitude there,
    and a warbling tone then breaks into beeps (README)."""
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        dists = [vae.encode(pixels[i:i + 64]).latent_dist for i in range(0, len(pixels), 64)]
    mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    decoder = torch.nn.ModuleDict({"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder})
    decoder.requires_grad_(True).train()

    def batch_fn(step: int):
        rng = np.random.default_rng([seed, step])
        idx = torch.from_numpy(rng.choice(len(pixels), batch_size, replace=False))
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g), pixels[idx]

    def loss_fn(batch):
        z, x = batch
        recon = decoder["decoder"](decoder["post_quant_conv"](z))
        weight = 1 + loud_weight * x.clamp(min=0)
        err = recon - x
        rec = (weight * (err.abs() + err ** 2)).sum() / weight.sum()
        return rec, {"rec": rec.item(), "l1": err.abs().mean().item()}

    summary = train("vae-decoder", decoder, batch_fn, loss_fn, out / "vae-decoder-run",
                    LoopSettings(steps=steps, lr=5e-4, warmup=20, save_every=25, seed=seed, max_steps=max_steps,
                                 device=device))
    vae.requires_grad_(False).eval()
    return summary


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> scaled latents [N, 4, h, w] (posterior means)."""
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) \
        * vae.config.scaling_factor


# -- 2/3. a UNet conditioned on a frozen text encoder (image or video) ----------------------------
class EMA:
    """An exponential moving average of the trained weights (diffusers' `EMAModel`, whose decay warms
    up as (1 + step) ** -2/3), sampled from instead of the raw weights; it checkpoints as tensors."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        from diffusers.training_utils import EMAModel

        self.params = [p for p in module.parameters() if p.requires_grad]
        self.ema = EMAModel(self.params, decay=decay, use_ema_warmup=True, power=2 / 3)

    def step(self, _: int) -> None:
        self.ema.step(self.params)

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"ema.{i}": p for i, p in enumerate(self.ema.shadow_params)},
                "ema.step": torch.tensor(self.ema.optimization_step)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for i, p in enumerate(self.ema.shadow_params):
            p.data.copy_(state[f"ema.{i}"])
        self.ema.optimization_step = int(state["ema.step"])

    def copy_to(self) -> None:
        self.ema.copy_to(self.params)


@torch.no_grad()
def cached_text_states(decoder, captions: list[str], chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's own (frozen) encoding of each distinct caption, computed once: (states [U, tokens,
    dim] with the "" encoding last, index [N] of each caption's row)."""
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    states = torch.cat([decoder.encode_text(unique[i:i + chunk]) for i in range(0, len(unique), chunk)]
                       + [decoder.unconditional_embeds()[None]])
    return states, torch.tensor([row[c] for c in captions])


def train_conditioned_unet(name: str, decoder, latents: torch.Tensor, captions: list[str], out: Path, *,
                           steps: int, batch_size: int, seed: int, lr: float = 1e-3, ema_decay: float = 0.999,
                           max_steps: int | None = None, device: str = "auto") -> dict:
    """Epsilon-prediction training of `decoder.pipeline.unet` alone, on cached latents and cached
    frozen text states (nothing but the UNet runs per step); captions are dropped 10% of the time for
    classifier-free guidance. The EMA weights are what the folder keeps.

    `latents` are [N, C, h, w] for images and [N, C, F, h, w] for video (the UNet3D layout).
    """
    pipe = decoder.pipeline
    unet = pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    states, index = cached_text_states(decoder, captions)
    empty = len(states) - 1
    unet.requires_grad_(True)
    ema = EMA(unet, ema_decay)

    def batch_fn(step: int):
        rng = np.random.default_rng([seed, step])
        idx = torch.from_numpy(rng.choice(len(latents), batch_size, replace=False))
        rows = index[idx].clone()
        rows[torch.from_numpy(rng.random(batch_size) < CAPTION_DROPOUT)] = empty
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        return latents[idx], states[rows], noise, t

    # AudioLDM's UNet takes its one embedding as a class embedding; SD's and ZeroScope's cross-attend
    class_embedding = unet.config.get("class_embed_type") == "simple_projection"  # UNet3D has no such field
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"  # see zero_terminal_snr

    def loss_fn(batch):
        x0, cond, noise, t = batch
        noisy = noise_scheduler.add_noise(x0, noise, t)
        if class_embedding:
            pred = unet(noisy, t, encoder_hidden_states=None, class_labels=cond[:, 0]).sample
        else:
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        target = noise_scheduler.get_velocity(x0, noise, t) if v_prediction else noise
        return F.mse_loss(pred, target), {}

    summary = train(name, unet, batch_fn, loss_fn, out / f"{name}-run",
                    LoopSettings(steps=steps, lr=lr, warmup=50, save_every=50, seed=seed, max_steps=max_steps,
                                 device=device),
                    on_step=ema.step, extra_state=ema.state, load_extra_state=ema.load)
    ema.copy_to()
    unet.requires_grad_(False).eval()
    return summary


def zero_terminal_snr(decoder) -> None:
    """Give the decoder a noise schedule that ends in pure noise, and have its UNet predict v.

    Stable Diffusion's schedule keeps 6.8% of the signal's amplitude at its last step, so a UNet trained on it
    can read the layout of the training sample (where a tone sits, which way a clip moves) from the
    noise, and at sampling time reads a layout into the pure noise it starts from, whatever the
    text says (the tiny video decoder drew the same motion for all four directions of a seed). Lin et
    al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2024): rescale the betas to
    zero terminal SNR, predict v (epsilon is undefined there) and sample from the last step
    ("trailing"). diffusers' DDIM/DDPM schedulers take all three as config, saved with the folder."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(decoder.pipeline.scheduler.config, rescale_betas_zero_snr=True,
                                          timestep_spacing="trailing", prediction_type="v_prediction")
    decoder.pipeline.register_modules(scheduler=scheduler)


def shipped_vae(folder: str = "anygpt:tiny/image") -> AutoencoderKL:
    """The trained image VAE of a decoder folder (64x64 RGB <-> 16x16x4), in float32."""
    from anygpt.config import resolve_path

    return AutoencoderKL.from_pretrained(resolve_path(folder), subfolder="vae", torch_dtype=torch.float32)


def train_tiny_image_and_video(data: str | Path, out: str | Path, *, vae_steps: int = 1500,
                               image_steps: int = 900, video_steps: int = 2000, batch_size: int = 64,
                               video_batch_size: int = 16, seed: int = 0, max_steps: int | None = None,
                               parts: tuple[str, ...] = ("image", "video"), device: str = "auto",
                               init_vae: str | None = "anygpt:tiny/image",
                               video_init: str | None = None, video_from: str | None = None,
                               zero_snr: bool = False, unet_lr: float = 1e-3, video_frame_stack: bool = False) -> dict:
    """The image and/or the video decoder on the shared VAE; writes out/image and out/video.

    The VAE comes from `init_vae` (a decoder folder; the shipped one by default), or is trained
    first when `init_vae` is None (its run resumes, so two processes can split image and video once it
    has finished). The UNets condition on the frozen MiniLM (see decoders/frozen_text.py). `video_init`
    names an image decoder folder (e.g. anygpt:tiny/image, or out/image) whose UNet starts the video
    UNet's spatial layers (`inflate_image_unet`); the video UNet then takes that UNet's channels and the
    folder's VAE, since its latents are the ones that UNet learnt. `video_from` instead continues a
    trained video decoder folder (its UNet, VAE and schedule). `zero_snr` switches the decoders it
    trains to a zero-terminal-SNR schedule with v-prediction (`zero_terminal_snr`); `unet_lr` is the
    UNets' learning rate (lower for a fine-tune). `video_frame_stack` builds the video UNet as a
    `FrameStackUNet` (one 2D UNet over a clip's frames stacked as channels, decoders/frame_stack.py) for
    the data's clip length, grown from `video_init`'s image UNet when given."""
    if video_init is not None and video_from is not None:
        raise ValueError("give video_init (grow from an image decoder) or video_from (continue a video decoder), not both")
    if video_frame_stack and video_from is not None:
        raise ValueError("video_frame_stack builds a new video UNet; video_from continues the one its folder has")
    out = Path(out)
    image_rows = load_rows(data, "image") if "image" in parts else []
    video_rows = load_rows(data, "video") if "video" in parts else []
    console.print(f"loading {len(image_rows)} images and {len(video_rows)} videos")
    images = to_pixels(np.stack([tw.load_image(r["path"]) for r in image_rows])) if image_rows else None
    videos = to_pixels(np.stack([tw.load_video(r["path"]) for r in video_rows])) if video_rows else None
    summaries = {}
    if video_from is not None and "video" in parts:
        init_vae = video_from
    if video_init is not None and "video" in parts:
        from anygpt.config import resolve_path

        image_init = ImageDecoder.from_pretrained(resolve_path(video_init), torch_dtype=torch.float32)
        init_vae = video_init
    if init_vae is not None:
        vae = shipped_vae(init_vae)
    else:
        vae = ImageDecoder.tiny(seed=seed).pipeline.vae
        pixels = [x for x in (images, None if videos is None else videos[:, ::2].flatten(0, 1)) if x is not None]
        summaries["vae"] = train_vae(vae, torch.cat(pixels), out, steps=vae_steps, batch_size=batch_size,
                                     seed=seed, max_steps=max_steps, device=device)
    vae.requires_grad_(False).eval()

    if "image" in parts:
        image_dec = ImageDecoder.tiny(seed=seed, text_encoder="minilm", channels=(64, 128),
                                      vae_channels=tuple(vae.config.block_out_channels))
        _use_vae(image_dec, vae)
        if zero_snr:
            zero_terminal_snr(image_dec)
        summaries["image"] = train_conditioned_unet("image-unet", image_dec, encode_latents(vae, images),
                                                    [r["caption"] for r in image_rows], out, steps=image_steps,
                                                    batch_size=batch_size, seed=seed, max_steps=max_steps,
                                                    device=device, lr=unet_lr)
        image_dec.save_pretrained(out / "image")
    if "video" in parts and video_from is not None:
        from anygpt.config import resolve_path

        video_dec = VideoDecoder.from_pretrained(resolve_path(video_from), torch_dtype=torch.float32)
    elif "video" in parts:
        channels = (32, 64) if video_init is None else tuple(image_init.pipeline.unet.config.block_out_channels)
        stacked = videos.shape[1] if video_frame_stack else None
        video_dec = VideoDecoder.tiny(seed=seed, text_encoder="minilm", channels=channels,
                                      vae_channels=tuple(vae.config.block_out_channels), stacked_frames=stacked)
        _use_vae(video_dec, vae)
        if video_frame_stack and video_init is not None:
            video_dec.pipeline.register_modules(unet=FrameStackUNet.grow(image_init.pipeline.unet, stacked))
            console.print(f"video UNet: {video_init}'s image UNet over {stacked} stacked frames")
    if "video" in parts:
        if zero_snr:
            zero_terminal_snr(video_dec)
        if video_init is not None and not video_frame_stack:
            n_copied = inflate_image_unet(video_dec.pipeline.unet, image_init.pipeline.unet)
            console.print(f"video UNet: {n_copied} spatial tensors from {video_init}'s image UNet")
        n, f = videos.shape[:2]
        video_latents = encode_latents(vae, videos.flatten(0, 1)).unflatten(0, (n, f)).movedim(1, 2)  # [N,C,F,h,w]
        summaries["video"] = train_conditioned_unet("video-unet", video_dec, video_latents,
                                                    [r["caption"] for r in video_rows], out, steps=video_steps,
                                                    batch_size=video_batch_size, seed=seed, max_steps=max_steps,
                                                    device=device, lr=unet_lr)
        video_dec.save_pretrained(out / "video")
    return summaries


def inflate_image_unet(video_unet: torch.nn.Module, image_unet: torch.nn.Module) -> int:
    """Start a UNet3DConditionModel from a UNet2DConditionModel of the same channels.

    diffusers names the spatial layers of both alike (conv_in, down_blocks.0.resnets.0, ...attentions.0,
    mid_block, up_blocks, conv_out); every image tensor whose name and shape match is copied. The temporal
    layers start as the identity: the temporal convolutions already end in a zero-initialised conv,
    and the temporal transformers' output projections (`transformer_in`, `temp_attentions`) are zeroed
    here, so the video UNet begins as the image UNet applied to each frame. Returns how many tensors
    were copied."""
    image = image_unet.state_dict()
    target = video_unet.state_dict()
    copied = {}
    for k, v in image.items():
        if k in target and v.shape != target[k].shape and v.shape == target[k].shape + (1, 1):
            v = v[..., 0, 0]  # a 1x1 conv projection (UNet2D's attentions) is the 3D one's linear projection
        if k in target and target[k].shape == v.shape:
            copied[k] = v
    spatial = [k for k in target if ".temp_" not in k and not k.startswith("transformer_in.")]
    missing = [k for k in spatial if k not in copied]
    if missing:
        raise ValueError(f"the image UNet does not match the video UNet's spatial layers (e.g. {missing[0]}): "
                         "build the video UNet with the image UNet's channels")
    video_unet.load_state_dict(copied, strict=False)
    with torch.no_grad():
        for name, module in video_unet.named_modules():
            if (name == "transformer_in" or ".temp_attentions." in name) and hasattr(module, "proj_out") \
                    and isinstance(module.proj_out, torch.nn.Linear):
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
    return len(copied)


def _use_vae(decoder, vae: AutoencoderKL) -> None:
    decoder.pipeline.vae.load_state_dict(vae.state_dict())
    decoder.pipeline.vae.register_to_config(scaling_factor=vae.config.scaling_factor)


# -- 4. the audio decoder ------------------------------------------------------------------------
AUDIO_SECONDS = 2.0  # every toy clip fits; shorter ones are padded with silence
SPECTROGRAM_BINS = 256
VAE_CROP_FRAMES = 64  # the audio VAE trains on 0.64-s windows (see train_vae)


def tiny_audio_decoder(seed: int = 0):
    """The tiny AudioLDM: frozen MiniLM sentence embedding (1x384), a 256-bin linear spectrogram
    (4x smaller latents: 50x64 for 2 s), a convolutional UNet, and Griffin-Lim for the wave."""
    from decoders import AudioDecoder

    return AudioDecoder.tiny(seed=seed, text_encoder="minilm", vocoder="griffinlim", mel_bins=SPECTROGRAM_BINS,
                             seconds=AUDIO_SECONDS, channels=(32, 64, 128), vae_channels=(8, 16, 32),
                             attention=False)


def train_tiny_audio(data: str | Path, out: str | Path, *, vae_steps: int = 600, vae_decoder_steps: int = 150,
                     unet_steps: int = 1000,
                     batch_size: int = 32, seed: int = 0, max_steps: int | None = None, device: str = "auto",
                     parts: tuple[str, ...] = ("vae", "unet"), init: str | Path | None = None,
                     zero_snr: bool = False, unet_lr: float = 1e-3, vae_loud_weight: float = 0.0,
                     novel_audio: int = 0, novel_kinds: tuple[str, ...] = tw.NOVEL_SOUNDS) -> dict:
    """Train the tiny AudioLDM's spectrogram VAE and its text-conditioned UNet; writes out/audio.

    Nothing is trained to make the wave: the vocoder is Griffin-Lim (decoders/spectral.py). `init`
    starts from a trained decoder folder and `parts` picks what to (re)train, e.g. a longer UNet run
    on the shipped VAE: parts=("unet",), init="anygpt:tiny/audio". (The UNet's latents come from the
    VAE: retraining the VAE means retraining the UNet.) `parts=("vae-decoder",)` fits only the VAE's
    decoder further on whole spectrograms (`vae_decoder_steps`); the encoder, so the UNet's latents, stay
    as they are (`vae_loud_weight`: see `train_vae_decoder`). `zero_snr` and `unet_lr` as in
    `train_tiny_image_and_video`. `novel_audio` sounds of kinds the world does not have, each at either
    length (`toyworld.novel_sounds`, of `novel_kinds`), join the UNet's training sounds, so that length is not a
    property of the kind (README, "The audio path": tried, not shipped)."""
    from anygpt.config import resolve_path
    from decoders import AudioDecoder

    unknown = set(parts) - {"vae", "vae-decoder", "unet"}
    if unknown or not parts or {"vae", "vae-decoder"} <= set(parts):
        raise ValueError(f"parts must be some of vae (or vae-decoder), unet; got {sorted(parts)}")
    if init is None and set(parts) != {"vae", "unet"}:
        raise ValueError("training only some parts needs `init`, a trained decoder folder to start from")

    out = Path(out)
    if novel_audio and "unet" not in parts:
        raise ValueError("novel_audio sounds are for the UNet: add unet to parts")
    rows = load_rows(data, "audio")
    world = len(rows)  # the VAE trains on the world's sounds only
    rows += tw.novel_sounds(novel_audio, seed, novel_kinds)
    length = int(AUDIO_SECONDS * tw.SAMPLE_RATE)
    waves = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        if "array" in r:
            wave = r["array"]
        else:
            wave, sr = tw.load_audio(r["path"])
            if sr != tw.SAMPLE_RATE:
                raise ValueError(f"{r['path']}: expected {tw.SAMPLE_RATE} Hz audio, got {sr}")
        waves[i, :min(length, len(wave))] = torch.from_numpy(wave[:length])
    dec = tiny_audio_decoder(seed) if init is None else AudioDecoder.from_pretrained(resolve_path(str(init)),
                                                                                      torch_dtype=torch.float32)
    if zero_snr:
        zero_terminal_snr(dec)
    pipe = dec.pipeline
    with torch.no_grad():
        specs = torch.cat([pipe.vocoder.spectrogram(waves[i:i + 256]) for i in range(0, len(waves), 256)])
    summaries = {}
    if "vae" in parts:
        # smaller batches than the UNet's: the windows' VAE steps, and the whole-clip decoder pass, cost more a row
        summaries["vae"] = train_vae(pipe.vae, specs[:world, None], out / "audio-vae", steps=vae_steps,
                                     batch_size=min(batch_size, 16), seed=seed, max_steps=max_steps, device=device,
                                     crop=VAE_CROP_FRAMES)
    if "vae" in parts or "vae-decoder" in parts:  # after a whole VAE, or alone: its decoder on whole clips
        summaries["vae-decoder"] = train_vae_decoder(pipe.vae, specs[:world, None], out / "audio-vae",
                                                     steps=vae_decoder_steps, batch_size=min(batch_size, 8),
                                                     seed=seed, max_steps=max_steps, device=device,
                                                     loud_weight=vae_loud_weight)
    pipe.vae.requires_grad_(False).eval()
    if "unet" in parts:
        # The UNet reads the caption's sentence embedding as a class embedding ([B, 1, 384] -> [B, 384]).
        latents = encode_latents(pipe.vae, specs[:, None])
        summaries["unet"] = train_conditioned_unet("audio-unet", dec, latents, [r["caption"] for r in rows], out,
                                                   steps=unet_steps, batch_size=batch_size, seed=seed,
                                                   max_steps=max_steps, device=device, lr=unet_lr)
        summaries["unet"]["sounds"] = {"world": world, "novel": len(rows) - world,
                                       "novel_kinds": sorted({r["attributes"]["kind"] for r in rows[world:]})}
    dec.save_pretrained(out / "audio")
    return summaries
