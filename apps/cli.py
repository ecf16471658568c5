"""The `anygpt` command line, an application over the anygpt package: chat, demo, scripted runs, data, eval, training."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from anygpt.config import paths_from_env
from anygpt.errors import AnyGPTError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Any-to-any multimodal generation.")
console = Console(stderr=True, soft_wrap=True)  # whole lines in logs: no wrapping at 80 columns
# What a user can fix (a bad file, path, option or checkpoint): every command reports it the same way,
# `error: ...` on stderr and exit status 2, never a traceback. A command's own failures exit 1.
USER_ERRORS = (AnyGPTError, ValueError, FileExistsError)


def _command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """`group.command(name)`, with the one error handler of the command line around the command."""
    def register(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except USER_ERRORS as e:
                console.print(f"[red]error:[/red] {escape(str(e))}")
                raise typer.Exit(2) from None

        return group.command(name)(run)

    return register


def _load(preset: str, config: Optional[Path], weights: Optional[Path]):
    """The model the options name; a preset's part paths come from the environment (read here, at the edge)."""
    from anygpt.pipeline import AnyGPT

    return AnyGPT.load(preset, config, weights, paths=paths_from_env())


def _config(preset: str, config: Optional[Path]):
    """The config the options name, without loading any part."""
    from anygpt.config import AnyGPTConfig, preset as get_preset

    return AnyGPTConfig.load(config) if config else get_preset(preset, paths_from_env())


@_command(app)
def chat(
    prompt: Annotated[str, typer.Argument(help="What you say to the model.")],
    image: Annotated[Optional[list[Path]], typer.Option(help="Image file(s) to attach.")] = None,
    audio: Annotated[Optional[list[Path]], typer.Option(help="Audio file(s) to attach.")] = None,
    video: Annotated[Optional[list[Path]], typer.Option(help="Video file(s) to attach.")] = None,
    depth: Annotated[Optional[list[Path]], typer.Option(help="Depth map(s) to attach.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the generated files.")] = Path("out"),
    preset: Annotated[str, typer.Option(help="Named preset.")] = "tiny",
    config: Annotated[Optional[Path], typer.Option(help="YAML/JSON config file (instead of a preset).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A folder written by save_pretrained.")] = None,
    seed: int = 0,
    steps: Annotated[Optional[int], typer.Option(help="Diffusion steps.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    max_new_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    outputs: Annotated[str, typer.Option(help="Output modalities allowed, comma-separated.")] = "image,audio,video",
    force: Annotated[str, typer.Option(help="Output modalities to make regardless, comma-separated.")] = "",
) -> None:
    """Send one message (with attachments) and write the reply's media to --out."""
    model = _load(preset, config, weights)
    r = model.chat(prompt, image=image, audio=audio, video=video, depth=depth, seed=seed,
                   num_inference_steps=steps, guidance_scale=guidance, max_new_tokens=max_new_tokens,
                   temperature=temperature, outputs=tuple(m for m in outputs.split(",") if m),
                   force=tuple(m for m in force.split(",") if m))
    files = r.save(out)
    if not model.trained:
        console.print("[yellow]note: this model's projectors are untrained (random); outputs are not results.[/yellow]")
    print(r.text)
    for f in files:
        console.print(f"wrote {f}")


@_command(app)
def demo(
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: int = 7860,
    preset: str = "tiny",
    config: Optional[Path] = None,
    weights: Optional[Path] = None,
    share: Annotated[bool, typer.Option(help="Gradio share link (off by default).")] = False,
    concurrency: Annotated[int, typer.Option(help="Requests served at once; the rest queue.")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = 20.0,
) -> None:
    """Serve the Gradio web demo."""
    from apps.demo import DemoSettings, launch

    model = _load(preset, config, weights)
    console.print(f"AnyGPT demo on http://{host}:{port}")
    launch(model, host=host, port=port, share=share,
           settings=DemoSettings(max_upload_mb=max_upload_mb, concurrency=concurrency))


@_command(app, "run")
def run_cmd(
    script: Annotated[Path, typer.Argument(help="YAML or JSONL script: a list of jobs.")],
    out: Annotated[Path, typer.Option(help="Output folder: one subfolder per job and manifest.jsonl.")],
    preset: str = "tiny",
    config: Optional[Path] = None,
    weights: Optional[Path] = None,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed job.")] = False,
    batch_size: Annotated[int, typer.Option(help="Jobs whose outputs decode together.")] = 8,
    backend: Annotated[str, typer.Option(help="local, or ray (Ray tasks; see --ray-address).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="A Ray cluster (ray.init address); default: a "
                                                            "local Ray instance.")] = None,
    workers: Annotated[int, typer.Option(help="--backend ray: actors, each loading the model once.")] = 1,
) -> None:
    """Run a script of generation jobs; re-running skips the jobs already done."""
    from apps.batch import load_script, run_script, run_script_ray

    jobs = load_script(script)
    if backend == "ray":
        spec = {"preset": preset, "config": str(config) if config else None,
                "weights": str(weights) if weights else None, "paths": paths_from_env()}
        summary = run_script_ray(jobs, out, model_spec=spec, address=ray_address, workers=workers,
                                 fail_fast=fail_fast, batch_size=batch_size, progress=console.is_terminal)
    elif backend == "local":
        model = _load(preset, config, weights)
        summary = run_script(model, jobs, out, fail_fast=fail_fast, batch_size=batch_size,
                             progress=console.is_terminal)
    else:
        raise typer.BadParameter(f"unknown backend {backend!r}; use local or ray")
    console.print(f"{len(summary.done)} done, {summary.skipped} already done, {len(summary.failed)} failed "
                  f"of {summary.total} jobs in {summary.seconds:.1f} s; manifest: {out / 'manifest.jsonl'}")
    for job_id, error in summary.failed:
        console.print(f"[red]failed[/red] {job_id}: {error}")
    if not summary.ok:
        raise typer.Exit(1)


@_command(app, "convert-nextgpt")
def convert_nextgpt_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="NExT-GPT's pytorch_model.pt (or the folder holding it).")],
    out: Annotated[Path, typer.Option(help="Folder to write (save_pretrained: config.json + safetensors).")],
    vicuna: Annotated[Optional[Path], typer.Option(help="Vicuna-7B v0, an HF folder.")] = None,
    imagebind: Annotated[Optional[Path], typer.Option(help="imagebind_huge.pth.")] = None,
    sd: Annotated[Optional[Path], typer.Option(help="Stable Diffusion v1.5, a diffusers folder.")] = None,
    audioldm: Annotated[Optional[Path], typer.Option(help="AudioLDM-l-full, a diffusers folder.")] = None,
    zeroscope: Annotated[Optional[Path], typer.Option(help="ZeroScope-v2-576w, a diffusers folder.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A config naming the frozen parts (instead of the "
                                                        "five paths).")] = None,
) -> None:
    """Convert NExT-GPT's released delta checkpoint into this project's own folder (no pickle needed later)."""
    import warnings

    from anygpt.nextgpt import NextGPTWarning, convert_nextgpt

    with warnings.catch_warnings():  # the report below says the same
        warnings.simplefilter("ignore", NextGPTWarning)
        report = convert_nextgpt(checkpoint, out, config=config, vicuna=vicuna, imagebind=imagebind, sd=sd,
                                 audioldm=audioldm, zeroscope=zeroscope)
    console.print(report.summary())
    console.print(f"wrote {out}")


@_command(app)
def toyworld(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    n: Annotated[int, typer.Option(help="Examples per modality.")] = 100,
    seed: int = 0,
    split: Annotated[str, typer.Option(help="train or heldout.")] = "train",
    counts: Annotated[Optional[str], typer.Option(help="Per-modality counts, e.g. image=3000,audio=1500 "
                                                       "(overrides --n).")] = None,
    dialogs: Annotated[int, typer.Option(help="Also write this many instruction dialogs (dialogs.jsonl).")] = 0,
    two_outputs: Annotated[float, typer.Option(help="Share of the dialogs' requests for media that ask for "
                                                    "two items.")] = 0.2,
    kinds_say_length: Annotated[bool, typer.Option("--kinds-say-length", help="Answer a question about a "
                                                   "sound's kind with its length too (\"It is a long noise burst.\").")] = False,
) -> None:
    """Write a synthetic toy-world dataset (images, audio, video, depth + manifest.jsonl)."""
    from anygpt.data.dialogs import make_dialogs
    from anygpt.data.toyworld import make_dataset, toyworld_main

    if counts:
        pairs = [c.split("=") for c in counts.split(",")]
        manifest = make_dataset(out, n_per_modality={m: int(k) for m, k in pairs}, seed=seed, split=split)
        print(f"wrote {counts}, split {split!r}, seed {seed}: {manifest}")
    else:
        manifest = toyworld_main(out, n=n, seed=seed, split=split)
    if dialogs:
        if not 0 <= two_outputs <= 1:
            raise typer.BadParameter(f"--two-outputs is a share from 0 to 1, got {two_outputs}")
        written = make_dialogs(manifest, dialogs, seed=seed, split=split, two_outputs=two_outputs,
                               kinds_say_length=kinds_say_length)
        print(f"wrote {written}")


@_command(app, "eval")
def evaluate(
    preset: str = "tiny",
    config: Optional[Path] = None,
    part: Annotated[str, typer.Option(help="encoder, decoders or llm (the whole model on held-out dialogs).")] = "decoders",
    weights: Annotated[Optional[Path], typer.Option(help="--part llm: a save_pretrained folder to judge.")] = None,
    n: Annotated[int, typer.Option(help="Held-out examples per modality.")] = 48,
    steps: Annotated[int, typer.Option(help="Diffusion steps for the decoder figures.")] = 25,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Also save samples: GRID-image.png, GRID-video.png "
                                                             "and GRID-audio.wav with its pitch track (GRID-audio.json).")] = None,
) -> None:
    """The held-out toy-world benchmark: retrieval recall@1 (encoder) or probe accuracy (decoders)."""
    import json

    from rich.table import Table

    from anygpt.config import OUTPUT_MODALITIES
    from anygpt.eval import benchmark
    from anygpt.pipeline import build_decoder, build_encoder

    cfg = _config(preset, config)
    if part == "encoder":
        encoder = build_encoder(cfg.encoder)
        results = benchmark.eval_encoder(encoder, n=n) | benchmark.read_from_words(encoder, n=n)
    elif part == "decoders":
        results = {}
        for m in OUTPUT_MODALITIES:
            if m in cfg.decoders:
                dec = build_decoder(m, cfg.decoders[m])
                kept: list = []
                results |= benchmark.eval_decoder(dec, m, n=n, steps=steps, keep=kept,
                                                  **cfg.decoders[m].size_options())
                if grid is not None and m in ("image", "video"):
                    benchmark.sample_grid(kept[:16] if m == "image" else kept[:6], f"{grid}-{m}.png")
                elif grid is not None and m == "audio":
                    benchmark.audio_sample(*kept[0], f"{grid}-audio")
    elif part == "llm":
        from anygpt.eval.conditioning import eval_conditioning

        app = _load(preset, config, weights)
        cfg = app.config
        results = eval_conditioning(app, n=n)  # the collapse check: no decoder run, so it comes first
        results |= benchmark.eval_llm(app, n=n, steps=steps)
    else:
        raise typer.BadParameter(f"unknown part {part!r}; use encoder, decoders or llm")
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title=f"AnyGPT eval: {cfg.name}, part {part}, {n} held-out examples per modality")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{100 * v:.1f}%")
    Console().print(table)


train_app = typer.Typer(no_args_is_help=True, help="Train AnyGPT's parts (resumable: re-run to continue).")
app.add_typer(train_app, name="train")


def _novel_kinds(text: str) -> tuple[str, ...]:
    """A --novel-kinds value: kinds, comma-separated, or "recipe" for the encoder recipe's."""
    if text.strip() == "recipe":
        from anygpt.train.tiny_encoder import RECIPE_NOVEL_KINDS
        return RECIPE_NOVEL_KINDS
    return tuple(k.strip() for k in text.split(",") if k.strip())


@_command(train_app, "tiny-encoder")
def train_tiny_encoder_cmd(
    data: Annotated[Path, typer.Option(help="Toy-world manifest.jsonl.")],
    out: Annotated[Path, typer.Option(help="Run folder (checkpoint, encoder/).")],
    steps: int = 600, batch_size: int = 16, per_modality: int = 600, seed: int = 0,
    attribute_weight: Annotated[float, typer.Option(help="Weight of the one-attribute views against whole captions.")] = 3.0,
    change_fraction: Annotated[float, typer.Option(help="Share of items the one-attribute views see changed in "
                                                        "what they do not name (grey, cut short).")] = 0.5,
    neutral_weight: Annotated[float, typer.Option(help="Weight of the pull of copies that lost an attribute (a cut "
                                                       "sound's length) toward none of its values; 0: off.")] = 0.0,
    novel_audio: Annotated[int, typer.Option(help="Also this many sounds of kinds the toy world does not have "
                                                  "(--novel-kinds), at both lengths.")] = 0,
    novel_kinds: Annotated[str, typer.Option(help="Their kinds, comma-separated: some of toyworld.NOVEL_SOUNDS "
                                                  "(chord, bell, organ note) and NOVEL_LINES (siren, two-note call, "
                                                  "tremolo tone, noise band, drone, squeal, rumble, sizzle, "
                                                  "crackle); recipe: all but crackle.")] = "recipe",
    init: Annotated[Optional[str], typer.Option(help="Fine-tune this saved encoder (e.g. anygpt:tiny/encoder): "
                                                     "only the --modalities' towers train, its text tower stays.")] = None,
    modalities: Annotated[str, typer.Option(help="Modalities to train on, comma-separated.")] = "image,audio,video,depth",
    audio_pad: Annotated[Optional[str], typer.Option(help="Pad sounds shorter than 2 s with silence (the tiny "
                                                          "preset's) or with ImageBind's zero fbank frames (fbank); "
                                                          "default: the encoder's own.")] = None,
    fresh_towers: Annotated[bool, typer.Option(help="With --init: start the --modalities' towers anew "
                                                     "(seeded), against the init encoder's text tower.")] = False,
    length_from_novel: Annotated[bool, typer.Option(help="Teach a sound's length only with the novel sounds: the "
                                                          "world's sounds are not told theirs.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop early (smoke runs).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    length_words_weight: Annotated[float, typer.Option(help="With --init: pull every sound to the margin at "
                                                           "which captions of sounds the world lacks say their "
                                                           "length (a fixed reader fitted on them).")] = 0.0,
) -> None:
    """Contrastive training of the tiny ImageBind on the toy world."""
    from anygpt.train.tiny_encoder import train_tiny_encoder

    train_tiny_encoder(data, out, steps=steps, batch_size=batch_size, per_modality=per_modality, seed=seed,
                       attribute_weight=attribute_weight, change_fraction=change_fraction,
                       neutral_weight=neutral_weight, novel_audio=novel_audio,
                       novel_kinds=_novel_kinds(novel_kinds), init=init,
                       modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
                       audio_pad=audio_pad, fresh_towers=fresh_towers, length_from_novel=length_from_novel,
                       length_words_weight=length_words_weight,
                       max_steps=max_steps, device=device)


@_command(train_app, "tiny-decoders")
def train_tiny_decoders_cmd(
    data: Annotated[Path, typer.Option(help="Toy-world manifest.jsonl.")],
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, image/, video/).")],
    vae_steps: int = 1500, image_steps: int = 900, video_steps: int = 2000, batch_size: int = 64,
    video_batch_size: int = 16, seed: int = 0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop each part early (smoke runs).")] = None,
    parts: Annotated[str, typer.Option(help="Which decoders: image, video or both.")] = "image,video",
    init_vae: Annotated[str, typer.Option(help="Decoder folder whose VAE to reuse, or 'none' to train one "
                                               "first (--vae-steps).")] = "anygpt:tiny/image",
    video_init: Annotated[Optional[str], typer.Option(
        help="Image decoder folder whose UNet starts the video UNet's spatial layers (its channels and "
             "VAE too), e.g. anygpt:tiny/image.")] = None,
    video_from: Annotated[Optional[str], typer.Option(
        help="Video decoder folder to continue training instead, e.g. anygpt:tiny/video.")] = None,
    zero_snr: Annotated[bool, typer.Option(help="Noise schedule ending in pure noise, with v-prediction "
                                                "(README: the decoders' noise schedule).")] = False,
    unet_lr: Annotated[float, typer.Option(help="The UNets' learning rate.")] = 1e-3,
    video_frame_stack: Annotated[bool, typer.Option(
        help="Video UNet that sees a clip's frames stacked as channels (grown from --video-init's image "
             "UNet; clips of the data's length only), instead of ZeroScope's UNet3D.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
) -> None:
    """Latent-diffusion training of the tiny image and video decoders (shared VAE, frozen MiniLM text)."""
    from anygpt.train.tiny_decoders import train_tiny_image_and_video

    train_tiny_image_and_video(data, out, vae_steps=vae_steps, image_steps=image_steps, video_steps=video_steps,
                               batch_size=batch_size, video_batch_size=video_batch_size, seed=seed,
                               max_steps=max_steps, parts=tuple(p for p in parts.split(",") if p), device=device,
                               init_vae=None if init_vae == "none" else init_vae, video_init=video_init,
                               video_from=video_from, zero_snr=zero_snr, unet_lr=unet_lr,
                               video_frame_stack=video_frame_stack)


@_command(train_app, "tiny-audio")
def train_tiny_audio_cmd(
    data: Annotated[Path, typer.Option(help="Toy-world manifest.jsonl.")],
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, audio/).")],
    vae_steps: int = 600,
    vae_decoder_steps: Annotated[int, typer.Option(help="Then the VAE's decoder alone on whole spectrograms.")] = 150,
    unet_steps: int = 1000, batch_size: int = 32, seed: int = 0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop each part early (smoke runs).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    parts: Annotated[str, typer.Option(help="What to train: vae (or vae-decoder: its decoder alone, the UNet's latents kept), unet (comma-separated; "
                                            "a subset needs --init).")] = "vae,unet",
    init: Annotated[Optional[str], typer.Option(help="Start from a trained decoder folder, e.g. anygpt:tiny/audio.")] = None,
    zero_snr: Annotated[bool, typer.Option(help="Noise schedule ending in pure noise, with v-prediction "
                                                "(README: the decoders' noise schedule).")] = False,
    unet_lr: Annotated[float, typer.Option(help="The UNet's learning rate.")] = 1e-3,
    vae_loud_weight: Annotated[float, typer.Option(help="The VAE decoder's fit (--parts vae or vae-decoder): "
                                                        "weight of the spectrogram's loud parts (README).")] = 0.0,
    novel_audio: Annotated[int, typer.Option(help="Also train the UNet on this many sounds of kinds the toy world "
                                                  "does not have (--novel-kinds), at either length (README).")] = 0,
    novel_kinds: Annotated[str, typer.Option(help="Their kinds, comma-separated, or recipe (see tiny-encoder --help).")
                           ] = "chord,bell,organ note",
) -> None:
    """Train the tiny AudioLDM: spectrogram VAE and MiniLM-conditioned UNet (Griffin-Lim makes the wave)."""
    from anygpt.train.tiny_decoders import train_tiny_audio

    train_tiny_audio(data, out, vae_steps=vae_steps, vae_decoder_steps=vae_decoder_steps, unet_steps=unet_steps,
                     batch_size=batch_size, seed=seed,
                     max_steps=max_steps, device=device, parts=tuple(p for p in parts.split(",") if p), init=init,
                     zero_snr=zero_snr, unet_lr=unet_lr, vae_loud_weight=vae_loud_weight, novel_audio=novel_audio,
                     novel_kinds=_novel_kinds(novel_kinds))


@_command(train_app, "projectors")
def train_projectors_cmd(
    init: Annotated[Path, typer.Option(help="The model folder (save_pretrained) whose projectors to refit.")],
    dialogs: Annotated[Path, typer.Option(help="Toy-world dialogs.jsonl (the requests for outputs).")],
    out: Annotated[Path, typer.Option(help="Run folder (cached states, model/, realign.json).")],
    decoder: Annotated[Optional[list[str]], typer.Option(help="MODALITY=FOLDER: move to this decoder first "
                                                                "(repeat), e.g. image=anygpt:tiny/image.")] = None,
    modalities: Annotated[str, typer.Option(help="Projectors to fit (comma-separated; default: all).")] = "",
    manifest: Annotated[Optional[Path], typer.Option(help="Also a request (and reply) for each of this manifest's captions (--per-modality of each).")] = None,
    per_modality: int = 500, limit: Optional[int] = None, steps: int = 3000, batch_size: int = 64,
    lr: float = 1e-3, contrastive_weight: float = 0.1, pad_weight: float = 0.0, seed: int = 0,
    fresh: Annotated[bool, typer.Option(help="Start each fitted projector anew from --seed, not from --init's.")] = False,
    reads: Annotated[Optional[str], typer.Option(help="What every output projector reads: 'signal' (the signal "
                                                      "tokens) or 'reply' (the reply's words too); default: "
                                                      "the model's.")] = None,
    heldout_fraction: Annotated[float, typer.Option(help="Share of captions kept out of the fit to measure it "
                                                         "on; 0: fit on all, measure nothing.")] = 0.1,
    dropout: Annotated[float, typer.Option(help="Dropout of the projector's layers during the fit.")] = 0.0,
    pooled_tokens: Annotated[int, typer.Option(help="Rebuild each fitted projector of a one-vector decoder (the tiny "
                                                    "audio) to write this many token states and pool them as the "
                                                    "decoder does; 0: as it is.")] = 0,
    novel_audio: Annotated[int, typer.Option(help="Also fit the sound projector on this many requests for sounds of "
                                                  "kinds the toy world does not have (--novel-kinds), at both "
                                                  "lengths.")] = 0,
    novel_kinds: Annotated[str, typer.Option(help="Their kinds, comma-separated, or recipe (see tiny-encoder --help).")
                           ] = "chord,bell,organ note",
    echo_audio: Annotated[int, typer.Option(help="Also fit the sound projector on this many requests whose reply "
                                                 "repeats the request's words for the kind.")] = 0,
) -> None:
    """Refit the output projectors on cached LLM states (masked MSE + InfoNCE: cannot collapse)."""
    from anygpt.train.realign import realign_projectors

    moves = {}
    for item in decoder or []:
        modality, sep, folder = item.partition("=")
        if not sep or not folder:
            raise ValueError(f"--decoder takes MODALITY=FOLDER, got {item!r}")
        moves[modality] = folder
    realign_projectors(init, dialogs, out, decoders=moves, modalities=tuple(m for m in modalities.split(",") if m) or None,
                       steps=steps, batch_size=batch_size, lr=lr, seed=seed, contrastive_weight=contrastive_weight,
                       pad_weight=pad_weight, limit=limit, manifest=manifest, per_modality=per_modality, fresh=fresh,
                       reads=reads, heldout_fraction=heldout_fraction, dropout=dropout, pooled_tokens=pooled_tokens,
                       novel_audio=novel_audio, novel_kinds=_novel_kinds(novel_kinds), echo_audio=echo_audio)


@_command(train_app, "export-tiny")
def export_tiny_cmd(
    part: Annotated[str, typer.Argument(help="encoder, image, video, audio, or model (a stage-3 model/ folder).")],
    source: Annotated[Path, typer.Option(help="The trained folder (e.g. data/runs/decoders/image).")],
    data: Annotated[Path, typer.Option(help="The dataset folder it was trained on (its dataset.json is recorded).")],
    command: Annotated[list[str], typer.Option(help="A command that made it (repeat: data, then training).")],
    out: Annotated[Optional[Path], typer.Option(help="Default: the package's weights/tiny.")] = None,
) -> None:
    """Ship a trained tiny part: copy it into the package in float16 and record how it was made."""
    from anygpt.train.export import default_out, export_part

    record = export_part(part, source, out or default_out(), commands=command, data=data)
    print(f"exported {part}: {len(record['files'])} files")


def _stage_command(stage: int):
    def command(
        data: Annotated[Path, typer.Option(help="Manifest (stages 1-2) or dialogs.jsonl (stage 3; stage 1: "
                                                "its questions about attached media).")],
        out: Annotated[Path, typer.Option(help="Run folder (checkpoint/, model/).")],
        config: Annotated[Optional[Path], typer.Option(help="Config file; default: --preset.")] = None,
        preset: str = "tiny",
        init: Annotated[Optional[Path], typer.Option(help="Start from a save_pretrained folder (the previous stage's model/).")] = None,
        steps: int = 300, batch_size: int = 8, lr: float = 1e-3, grad_accum: int = 1, seed: int = 0,
        max_steps: Annotated[Optional[int], typer.Option(help="Stop early (smoke runs).")] = None,
        save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (and at the end).")] = 50,
        gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute the LLM's activations in the "
                                                                   "backward pass (memory for time).")] = False,
        novel_audio: Annotated[int, typer.Option(help="Stages 1, 3: also this many sounds of kinds the toy world does "
                                                      "not have (--novel-kinds), at both lengths, described.")] = 0,
        novel_kinds: Annotated[str, typer.Option(help="Their kinds, comma-separated, or recipe (see tiny-encoder --help).")
                               ] = "chord,bell,organ note",
        grey_clips: Annotated[int, typer.Option(help="Stages 1, 3: also this many grey clips, asked which way they "
                                                     "move.")] = 0,
        cut_sounds: Annotated[int, typer.Option(help="Stages 1, 3: also this many world sounds cut shorter than either "
                                                     "length, asked their kind.")] = 0,
        stretched_sounds: Annotated[int, typer.Option(help="Stages 1, 3: also this many world sounds drawn out "
                                                           "longer than either length, asked their kind.")] = 0,
        paint_clips: Annotated[int, typer.Option(help="Stages 1, 3: also this many clips in colours the toy world "
                                                      "does not have, asked which way they move or described.")] = 0,
        lora: Annotated[bool, typer.Option("--lora", help="Stage 1 on dialogs: train the LoRA too (text-only "
                                                          "requests change: refit the output projectors after).")] = False,
        length_from_novel: Annotated[bool, typer.Option("--length-from-novel", help="Stage 1 on dialogs, or "
                                                        "stage 3: the length words of answers about the world's "
                                                        "sounds are not learnt; only the novel sounds and captions "
                                                        "teach length.")] = False,
        caption_sounds: Annotated[int, typer.Option(help="Stages 1, 3: also this many captions of sounds the toy "
                                                         "world does not have, at both lengths, read by the "
                                                         "encoder's text branch in place of a sound.")] = 0,
        caption_clips: Annotated[int, typer.Option(help="Stages 1, 3: also this many captions of clips in colours "
                                                        "the toy world does not have, in place of a clip.")] = 0,
        fresh_lora: Annotated[bool, typer.Option("--fresh-lora", help="Stage 3 from --init: start the LoRA anew, "
                                                               "keeping the projectors and signal rows.")] = False,
        hedge_lengths: Annotated[bool, typer.Option("--hedge-lengths", help="Stages 1, 3: learn the length words "
                                                    "of answers about sounds as soft targets (0.9 / 0.1).")] = False,
        novel_kinds_unlearnt: Annotated[bool, typer.Option("--novel-kinds-unlearnt", help="With --novel-audio: "
                                                           "their kind words are not learnt, only their "
                                                           "lengths.")] = False,
        audio_windows: Annotated[Optional[str], typer.Option(help="Read each sound as its whole and these "
                                                              "windows, START:END seconds, comma-separated "
                                                              "(e.g. 1.5: its tail); saved in the model's "
                                                              "config.")] = None,
        audio_loudness: Annotated[Optional[str], typer.Option(help="Then these windows read as their loudness "
                                                               "alone, on a fixed tone (e.g. 1.5:); saved "
                                                               "in the model's config.")] = None,
        video_grey: Annotated[bool, typer.Option("--video-grey", help="Read each clip as itself and its grey "
                                                 "copy; saved in the model's config.")] = False,
        even_lengths: Annotated[bool, typer.Option("--even-lengths", help="Stage 1 on dialogs, or stage 3: the "
                                                   "length words of answers about the world's sounds are "
                                                   "learnt half and half (that one is said, not which).")] = False,
        video_still: Annotated[bool, typer.Option("--video-still", help="Read each clip with its middle frame "
                                                  "as a picture too; saved in the model's config.")] = False,
        made_lengths_unlearnt: Annotated[bool, typer.Option("--made-lengths-unlearnt", help="Stage 3: the length "
                                                            "words of replies that make a sound are not learnt "
                                                            "(the kind gives them away in the toy world).")] = False,
        any_lengths: Annotated[bool, typer.Option("--any-lengths", help="Stage 1 on dialogs, or stage 3: either "
                                                  "length word is right in answers about the world's sounds "
                                                  "(that one is said; the novel sounds teach which).")] = False,
        length_from_loudness: Annotated[bool, typer.Option("--length-from-loudness", help="With --novel-audio "
                                                           "and loudness windows: every other novel sound is "
                                                           "heard at the other length but in those windows.")
                                        ] = False,
    ) -> None:
        from anygpt.train.stages import train_stage

        cfg = None if init else _config(preset, config)
        train_stage(stage, data, out, config=cfg, init=init, steps=steps, batch_size=batch_size, lr=lr,
                    grad_accum=grad_accum, seed=seed, max_steps=max_steps, save_every=save_every,
                    gradient_checkpointing=gradient_checkpointing, novel_audio=novel_audio,
                    novel_kinds=_novel_kinds(novel_kinds), grey_clips=grey_clips,
                    cut_sounds=cut_sounds, paint_clips=paint_clips, lora=lora,
                    length_from_novel=length_from_novel, caption_sounds=caption_sounds,
                    caption_clips=caption_clips, fresh_lora=fresh_lora,
                    hedge_lengths=hedge_lengths, novel_kinds_unlearnt=novel_kinds_unlearnt,
                    audio_windows=audio_windows, video_grey=video_grey, even_lengths=even_lengths,
                    video_still=video_still, stretched_sounds=stretched_sounds,
                    audio_loudness=audio_loudness, made_lengths_unlearnt=made_lengths_unlearnt,
                    any_lengths=any_lengths, length_from_loudness=length_from_loudness)

    command.__doc__ = {1: "Stage 1, encoder-side alignment: X -> caption; trains the input projector.",
                       2: "Stage 2, decoder-side alignment: caption -> signal tokens; trains signal rows and output projectors.",
                       3: "Stage 3, instruction tuning on dialogs: LoRA, projectors and signal rows."}[stage]
    return command


for _stage in (1, 2, 3):
    _command(train_app, f"stage{_stage}")(_stage_command(_stage))


if __name__ == "__main__":
    app()
