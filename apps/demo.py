"""A minimal Gradio page over `AnyGPT.chat`: a message, optional attachments, the reply and its media."""

from __future__ import annotations

import tempfile

import gradio as gr

from anygpt import AnyGPT, AnyGPTError
from anygpt.config import OUTPUT_MODALITIES


def build_demo(model: AnyGPT) -> gr.Blocks:
    def respond(message, image, audio, video, outputs, seed):
        try:
            r = model.chat(message, image=image or None, audio=audio or None, video=video or None,
                           outputs=tuple(outputs), seed=int(seed))
        except AnyGPTError as e:
            raise gr.Error(str(e))
        out_dir = tempfile.mkdtemp(prefix="anygpt-demo-")
        files = r.save(out_dir)
        by_ext = lambda ext: [str(f) for f in files if f.suffix == ext]  # noqa: E731
        audios, videos = by_ext(".wav"), by_ext(".mp4")
        return (r.text, by_ext(".png"), audios[0] if audios else None, videos[0] if videos else None,
                {"signal_runs": r.trace.signal_runs, "timings_s": r.trace.timings})

    with gr.Blocks(title="AnyGPT") as demo:
        gr.Markdown("# AnyGPT\nAny-to-any chat: attach an image, sound or clip; ask for pictures, sounds or clips.")
        if not model.trained:
            gr.Markdown("**Note:** this model's projectors are untrained (random weights): its media are not results.")
        with gr.Row():
            with gr.Column():
                message = gr.Textbox(label="Message", placeholder="draw a red circle")
                image = gr.Image(label="Image", type="filepath")
                audio = gr.Audio(label="Audio", type="filepath")
                video = gr.Video(label="Video")
                outputs = gr.CheckboxGroup(list(OUTPUT_MODALITIES), value=list(OUTPUT_MODALITIES),
                                           label="Outputs allowed")
                seed = gr.Number(value=0, precision=0, label="Seed")
                send = gr.Button("Send", variant="primary")
            with gr.Column():
                reply = gr.Textbox(label="Reply")
                images = gr.Gallery(label="Images")
                audio_out = gr.Audio(label="Audio", type="filepath")
                video_out = gr.Video(label="Video")
                trace = gr.JSON(label="Trace")
        send.click(respond, [message, image, audio, video, outputs, seed],
                   [reply, images, audio_out, video_out, trace], api_name="chat")
    return demo
