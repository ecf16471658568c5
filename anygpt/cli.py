"""The `anygpt` command line: chat once, or serve the web demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from anygpt.errors import AnyGPTError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Any-to-any multimodal generation.")
console = Console(stderr=True)


def _load(preset: str, config: Optional[Path], weights: Optional[Path]):
    from anygpt.pipeline import AnyGPT

    if weights is not None:
        return AnyGPT.from_pretrained(weights)
    if config is not None:
        return AnyGPT.from_config(config)
    return AnyGPT.from_preset(preset)


@app.command()
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
    try:
        model = _load(preset, config, weights)
        r = model.chat(prompt, image=image, audio=audio, video=video, depth=depth, seed=seed,
                       num_inference_steps=steps, guidance_scale=guidance, max_new_tokens=max_new_tokens,
                       temperature=temperature, outputs=tuple(m for m in outputs.split(",") if m),
                       force=tuple(m for m in force.split(",") if m))
        files = r.save(out)
    except AnyGPTError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if not model.trained:
        console.print("[yellow]note: this model's projectors are untrained (random); outputs are not results.[/yellow]")
    print(r.text)
    for f in files:
        console.print(f"wrote {f}")


@app.command()
def demo(
    host: str = "127.0.0.1",
    port: int = 7860,
    preset: str = "tiny",
    config: Optional[Path] = None,
    weights: Optional[Path] = None,
    share: Annotated[bool, typer.Option(help="Gradio share link (off by default).")] = False,
) -> None:
    """Serve the Gradio web demo."""
    from apps.demo import build_demo

    try:
        model = _load(preset, config, weights)
    except AnyGPTError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    console.print(f"AnyGPT demo on http://{host}:{port}")
    build_demo(model).queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, share=share)


if __name__ == "__main__":
    app()
