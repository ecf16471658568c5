"""End-to-end tests of the AnyGPT façade on the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygpt import AnyGPT, InputError
from conftest import read_video

FAST = dict(max_new_tokens=6, num_inference_steps=2)


def _inputs(media_dir):
    return dict(image=str(media_dir / "red_square.png"), audio=str(media_dir / "tone.wav"),
                video=str(media_dir / "clip.mp4"))


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_chat_all_inputs_forced_output_writes_real_files(tiny, media_dir, tmp_path, modality):
    r = tiny.chat("look at these and make something", **_inputs(media_dir), force=(modality,),
                  outputs=(modality,), **FAST)
    assert [a.meta["modality"] for a in r.artifacts] == [modality]
    assert r.trace.signal_runs[0]["modality"] == modality
    assert r.trace.signal_runs[0]["tokens"] == list(tiny.model.signal.tokens[modality])
    assert "[IMG0]" not in r.text and "[AUD0]" not in r.text and "[VID0]" not in r.text
    files = r.save(tmp_path)
    summary = json.loads((tmp_path / "response.json").read_text())
    assert summary["files"] == [files[0].name]
    size = tiny.config.decoders[modality].size
    if modality == "image":
        with Image.open(files[0]) as im:
            assert im.format == "PNG" and im.size == (size["width"], size["height"])
    elif modality == "audio":
        info = sf.info(files[0])
        assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        assert info.duration == pytest.approx(size["audio_length_in_s"], abs=0.1)
    else:
        frames, codec = read_video(files[0])
        assert codec == "h264"
        assert frames.shape[0] == size["num_frames"] and frames.shape[1:3] == (size["height"], size["width"])


def test_text_only_chat_makes_no_media_when_outputs_are_off(tiny):
    r = tiny.chat("What is the capital of France?", outputs=(), max_new_tokens=12)
    assert r.artifacts == [] and r.trace.signal_runs == []
    assert r.text  # the LLM answered in words


def test_signal_hidden_states_are_the_decoder_conditioning(tiny, monkeypatch):
    """The projector output of the signal tokens' hidden states is exactly what the pipeline gets;
    no text prompt reaches it; and changing those states changes the picture."""
    decoder = tiny.decoder("image")
    calls = []
    original = type(decoder.pipeline).__call__

    def spy(pipe, *args, **kwargs):
        calls.append((args, kwargs))
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(type(decoder.pipeline), "__call__", spy)
    model = tiny.model
    replies = []
    generate = model.generate_batch
    monkeypatch.setattr(model, "generate_batch", lambda *a, **k: replies.extend(generate(*a, **k)) or replies)
    r1 = tiny.chat("draw a red circle", force=("image",), outputs=("image",), **FAST)
    (args, kwargs), = calls
    assert not args and kwargs.get("prompt") is None and kwargs.get("negative_prompt") is None

    # Recompute the conditioning from the LLM's own states, independently of the pipeline code path.
    with torch.inference_mode():
        ids = replies[0].ids
        runs = model.find_runs(ids)
        expected = model.signal_conditioning(r1.history[:-1], ids, runs)[0]
    assert torch.allclose(kwargs["prompt_embeds"][0].float(), expected, atol=1e-5)

    # Shift the projector's output: same prompt, same seed, a different image.
    monkeypatch.undo()
    with torch.no_grad():
        model.output_projectors["image"].model.bias += 1.0
    try:
        r2 = tiny.chat("draw a red circle", force=("image",), outputs=("image",), **FAST)
    finally:
        with torch.no_grad():
            model.output_projectors["image"].model.bias -= 1.0
    a, b = (np.asarray(r.images[0].image, dtype=np.float32) for r in (r1, r2))
    assert np.abs(a - b).mean() > 1.0


def test_same_seed_same_output_and_different_seed_differs(tiny):
    a = tiny.chat("draw something", force=("image",), outputs=("image",), seed=3, **FAST)
    b = tiny.chat("draw something", force=("image",), outputs=("image",), seed=3, **FAST)
    c = tiny.chat("draw something", force=("image",), outputs=("image",), seed=4, **FAST)
    pa, pb, pc = (np.asarray(r.images[0].image) for r in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)


def test_save_pretrained_round_trip_gives_identical_outputs(tiny, media_dir, tmp_path):
    model = tiny.model
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # make the trained parts differ from a fresh build, so the test means something
        for p in list(model.input_projector.parameters()) + list(model.output_projectors.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    try:
        kwargs = dict(image=str(media_dir / "red_square.png"), force=("image", "audio"), outputs=("image", "audio"),
                      seed=7, **FAST)
        r1 = tiny.chat("make a picture and a sound", **kwargs)
        tiny.save_pretrained(tmp_path / "saved")
        loaded = AnyGPT.from_pretrained(tmp_path / "saved")
        r2 = loaded.chat("make a picture and a sound", **kwargs)
    finally:
        model.load_trainable_state(before)
    assert loaded.trained
    assert r1.text == r2.text and r1.trace.raw_reply == r2.trace.raw_reply
    assert np.array_equal(np.asarray(r1.images[0].image), np.asarray(r2.images[0].image))
    assert np.array_equal(r1.audios[0].waveform, r2.audios[0].waveform)


def test_multi_turn_history_reuses_encodings(tiny, media_dir, monkeypatch):
    image = str(media_dir / "red_square.png")
    r1 = tiny.chat("what is in this picture?", image=image, outputs=(), max_new_tokens=4)
    forwards = []
    model = tiny.model.encoder.model
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        r2 = tiny.chat("and what colour is it?", history=r1.history, outputs=(), max_new_tokens=4)
    finally:
        hook.remove()
    assert forwards == []  # the image of turn 1 came from the encoder's cache
    assert [t.role for t in r2.history] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("call, message", [
    (lambda m, d: m.chat("hi", image=str(d / "missing.png")), "image file not found"),
    (lambda m, d: m.chat("hi", image=str(d / "not_an_image.png")), "not_an_image.png"),
    (lambda m, d: m.chat("hi", media=[("smell", "x")]), "unknown input modality 'smell'"),
    (lambda m, d: m.chat("   "), "prompt is empty"),
    (lambda m, d: m.chat("hi", outputs=("hologram",)), "unknown output modality"),
    (lambda m, d: m.chat("hi", num_inference_steps="many"), "num_inference_steps"),
    (lambda m, d: m.chat("hi [IMG0] there"), "reserved token"),
])
def test_bad_input_gets_a_clear_error(tiny, media_dir, call, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        call(tiny, media_dir)


def test_decoders_load_lazily(tmp_path):
    from anygpt.config import tiny_preset

    model = AnyGPT.from_config(tiny_preset())
    assert model.loaded_decoders == []
    model.chat("draw", force=("image",), outputs=("image",), **FAST)
    assert model.loaded_decoders == ["image"]
