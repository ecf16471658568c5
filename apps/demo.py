"""The Gradio web demo: a multimodal chat over `AnyGPT.chat`.

One page: the conversation (the reply's words stream in, its pictures, sounds and clips show
inline), a message box that takes attachments, stop and clear buttons, example prompts, the
generation settings, and a trace of each reply (signal tokens fired, seconds per stage).

Each browser session gets its own temporary folder for the media it makes, removed when the
session ends; Gradio's own upload cache is swept hourly. Uploads are checked here (size, kind)
before the model sees them, so a bad file is a readable error in the page, never a crash.

API (for `gradio_client`): `/chat` takes (message, image, audio, video, outputs, seed) and
returns (text, images, audio, video, trace); `/respond` is the streaming chat the page uses.

    from gradio_client import Client, handle_file
    text, images, audio, video, trace = Client("http://127.0.0.1:7860/").predict(
        "draw a red circle", None, None, None, ["image"], 0, api_name="/chat")
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from anygpt import AnyGPT, AnyGPTError
from anygpt.config import OUTPUT_MODALITIES
from anygpt.model import Turn

EXTENSIONS = {
    "image": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"},
    "audio": {".wav", ".mp3", ".flac", ".ogg", ".m4a"},
    "video": {".mp4", ".webm", ".mov", ".avi", ".mkv"},
}
EXAMPLES = [
    "draw a red circle",
    "play a rising sweep",
    "animate a blue square moving right",
    "What is the capital of France?",
]


@dataclass
class DemoSettings:
    """What the operator sets at launch (not the visitor)."""

    max_upload_mb: float = 20.0
    concurrency: int = 1  # requests the model serves at once; the rest wait in Gradio's queue
    root: Path | None = None  # where per-session folders live (default: a fresh temporary folder)


def _modality_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    for modality, suffixes in EXTENSIONS.items():
        if suffix in suffixes:
            return modality
    known = ", ".join(sorted(s for v in EXTENSIONS.values() for s in v))
    raise gr.Error(f"{Path(path).name}: not a supported attachment (use one of {known})")


def _check_size(path: str, limit_mb: float) -> None:
    size = Path(path).stat().st_size
    if size > limit_mb * 2**20:
        raise gr.Error(f"{Path(path).name} is {size / 2**20:.1f} MB; uploads are limited to {limit_mb:g} MB")


class DemoSession:
    """One visitor's state: the model-side history and a folder for their media."""

    def __init__(self, root: Path):
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.history: list[Turn] = []
        self.replies = 0

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _close_session(session: DemoSession | None) -> None:
    if session is not None:
        session.close()


def build_demo(model: AnyGPT, settings: DemoSettings | None = None) -> gr.Blocks:
    settings = settings or DemoSettings()
    root = settings.root or Path(tempfile.mkdtemp(prefix="anygpt-demo-"))
    root.mkdir(parents=True, exist_ok=True)

    def media_items(files: list[str], depth: str | None) -> list[tuple[str, str]]:
        items = []
        for path in files:
            _check_size(path, settings.max_upload_mb)
            items.append((_modality_of(path), path))
        if depth:
            _check_size(depth, settings.max_upload_mb)
            if Path(depth).suffix.lower() != ".png":
                raise gr.Error(f"{Path(depth).name}: depth maps are PNG files (8- or 16-bit grayscale)")
            items.append(("depth", depth))
        return items

    def run_chat(session: DemoSession, text: str, media: list, on_text, options: dict):
        try:
            return model.chat(text, media=media, history=session.history, on_text=on_text, **options)
        except AnyGPTError as e:
            raise gr.Error(str(e)) from None

    def respond(message: dict, chat: list, session: DemoSession | None, outputs: list[str], force: list[str],
                seed: float, steps: float, guidance: float, max_tokens: float, depth: str | None):
        """The page's chat: stream the words, then show each artifact inline."""
        session = session or DemoSession(root)
        text = (message or {}).get("text", "").strip()
        files = list((message or {}).get("files", []))
        if not text:
            raise gr.Error("the message is empty: say what you want")
        media = media_items(files, depth)
        chat = list(chat or [])
        for _, path in media:
            chat.append({"role": "user", "content": {"path": path}})
        chat.append({"role": "user", "content": text})
        chat.append({"role": "assistant", "content": ""})
        yield gr.MultimodalTextbox(value=None), chat, session, None, None

        options = dict(outputs=tuple(outputs), force=tuple(m for m in force if m in outputs), seed=int(seed), num_inference_steps=int(steps),
                       guidance_scale=float(guidance), max_new_tokens=int(max_tokens))
        pieces: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def work():
            try:
                result["response"] = run_chat(session, text, media, pieces.put, options)
            except BaseException as e:  # handed to the generator below, which re-raises it in Gradio's thread
                result["error"] = e
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        words = ""
        while (piece := pieces.get()) is not None:
            words += piece
            chat[-1] = {"role": "assistant", "content": words}
            yield gr.skip(), chat, session, gr.skip(), gr.skip()
        if "error" in result:
            chat.pop()
            raise result["error"] if isinstance(result["error"], gr.Error) else gr.Error(str(result["error"]))
        r = result["response"]
        session.history = r.history
        folder = session.folder / f"reply-{session.replies}"
        session.replies += 1
        files_out = r.save(folder)
        chat[-1] = {"role": "assistant", "content": r.text or "(no words, only media)"}
        show = {".png": gr.Image, ".wav": gr.Audio, ".mp4": gr.Video}
        for f in files_out:
            if f.suffix in show:
                chat.append({"role": "assistant", "content": show[f.suffix](value=str(f))})
        trace = {"signal_runs": r.trace.signal_runs, "timings_s": {k: round(v, 3) for k, v in r.trace.timings.items()},
                 "seed": r.trace.seed, "model_ids": r.trace.model_ids}
        yield gr.skip(), chat, session, trace, [str(f) for f in files_out if f.suffix in show]

    def clear(session: DemoSession | None):
        if session is not None:
            session.close()
        return None, None, None, None

    def api_chat(message: str, image: str | None, audio: str | None, video: str | None, outputs: list[str],
                 seed: float):
        """One-shot chat for scripts (gradio_client): no history, files in, files out."""
        session = DemoSession(root)
        try:
            media = media_items([p for p in (image, audio, video) if p], None)
            if not (message or "").strip():
                raise gr.Error("the message is empty: say what you want")
            r = run_chat(session, message, media, None, dict(outputs=tuple(outputs or ()), seed=int(seed)))
            files = r.save(session.folder)
        except BaseException:
            session.close()
            raise
        by_ext = lambda ext: [str(f) for f in files if f.suffix == ext]  # noqa: E731
        audios, videos = by_ext(".wav"), by_ext(".mp4")
        return (r.text, by_ext(".png"), audios[0] if audios else None, videos[0] if videos else None,
                {"signal_runs": r.trace.signal_runs, "timings_s": r.trace.timings})

    with gr.Blocks(title="AnyGPT", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None, delete_callback=_close_session, time_to_live=6 * 3600)
        gr.Markdown("# AnyGPT\nAny-to-any chat: attach a picture, sound or clip; ask for pictures, sounds or clips.")
        if not model.trained:
            gr.Markdown("**Note:** this model's projectors are untrained (random weights): its media are not results.")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="conversation")
                box = gr.MultimodalTextbox(label="Message", placeholder="Type a message; attach images, sounds or clips",
                                           file_count="multiple", file_types=["image", "audio", "video"],
                                           sources=["upload"], elem_id="message")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_button = gr.Button("Clear", elem_id="clear")
                gr.Examples(examples=[{"text": e, "files": []} for e in EXAMPLES], inputs=[box], label="Try")
            with gr.Column(scale=2):
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    gr.Markdown(f"Model: **{model.config.name}** ({', '.join(f'{k}: {v}' for k, v in model.model_ids().items())}). "
                                "Another preset, config or trained folder: `anygpt demo --preset/--config/--weights`.")
                    outputs = gr.CheckboxGroup(list(model.config.decoders), value=list(model.config.decoders),
                                               label="Outputs allowed")
                    force = gr.CheckboxGroup(list(model.config.decoders), value=[], elem_id="force",
                                             label="Always make (even when the model does not ask for it)")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    steps = gr.Slider(1, 100, value=_default(model, "num_inference_steps", 10), step=1,
                                      label="Diffusion steps")
                    guidance = gr.Slider(1.0, 15.0, value=_default(model, "guidance_scale", 3.0), step=0.5,
                                         label="Guidance scale")
                    max_tokens = gr.Slider(8, 512, value=model.config.max_new_tokens, step=8, label="Max new tokens")
                    depth = gr.File(label="Depth map (PNG, attached to the next message)", file_types=[".png"],
                                    type="filepath")
                trace = gr.JSON(label="Trace of the last reply", elem_id="trace")
                files = gr.File(label="Files of the last reply", file_count="multiple", interactive=False)
        event = box.submit(respond, [box, chatbot, session, outputs, force, seed, steps, guidance, max_tokens, depth],
                           [box, chatbot, session, trace, files], api_name="respond")
        stop.click(None, cancels=[event])
        clear_button.click(clear, [session], [chatbot, session, trace, files], api_name=False)
        with gr.Row(visible=False):  # the one-shot API endpoint, no UI of its own
            api_in = [gr.Textbox(), gr.Image(type="filepath"), gr.Audio(type="filepath"), gr.Video(),
                      gr.CheckboxGroup(list(OUTPUT_MODALITIES)), gr.Number(precision=0)]
            api_out = [gr.Textbox(), gr.Gallery(), gr.Audio(type="filepath"), gr.Video(), gr.JSON()]
            api_button = gr.Button()
        api_button.click(api_chat, api_in, api_out, api_name="chat")
    demo.anygpt_root = root  # where the sessions' files live (launch allows Gradio to serve them)
    demo.anygpt_settings = settings
    return demo


def _default(model: AnyGPT, key: str, fallback: float) -> float:
    values = [getattr(d, key) for d in model.config.decoders.values()]
    return values[0] if values else fallback


def launch(model: AnyGPT, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           settings: DemoSettings | None = None, block: bool = True) -> gr.Blocks:
    """Build and serve the demo with its queue and upload limit."""
    demo = build_demo(model, settings)
    s = demo.anygpt_settings
    demo.queue(default_concurrency_limit=s.concurrency)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{s.max_upload_mb:g}mb",
                allowed_paths=[str(demo.anygpt_root)], prevent_thread_lock=not block)
    return demo
