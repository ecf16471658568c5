"""One forward path for training and inference (`AnyGPTModel.prepare_inputs_labels` and `forward`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anygpt.model import Conversation, Turn
from anygpt.pipeline import ChatRequest
from anygpt.train.stages import Sample, StageLoss

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("anygpt", "apps", "bench", "encoders", "decoders", "scripts", "examples")


@pytest.mark.parametrize("reads", ["signal", "reply"])
def test_inference_and_training_give_the_same_states_and_conditionings(tiny, monkeypatch, reads):
    """A reply written by the pipeline (states kept by generation, projected by `signal_conditioning`)
    and the same conversation through the training forward (`model(...)`, as `StageLoss` runs it):
    the same tokens, the same states at what the projector reads, the same conditionings; for either
    setting of what the output projectors read (the signal tokens, or the reply's words as well)."""
    model = tiny.model
    projector = model.config.projector.model_copy(update={"reads": reads})
    monkeypatch.setattr(model, "config", model.config.model_copy(update={"projector": projector}))
    replies = []
    generate = model.generate_batch
    monkeypatch.setattr(model, "generate_batch", lambda *a, **k: replies.extend(generate(*a, **k)) or replies)
    prompt = "draw a red circle"
    ((modality, conditioning),), = tiny.conditioning_batch(
        [ChatRequest(prompt, options=dict(outputs=("image",), max_new_tokens=16))])
    monkeypatch.setattr(model, "generate_batch", generate)
    (reply,), (run,) = replies, model.find_runs(replies[0].ids)
    run.reads = model.reads(run, 0)
    assert run.reads == (run.positions if reads == "signal" else list(range(run.positions[-1] + 1)))
    assert reads == "signal" or run.positions[0] > 0  # the tiny LLM writes words before its run
    assert modality == run.modality == "image" and run.positions[-1] < reply.hidden.shape[0]  # states from generation

    history = [Turn("user", prompt), Turn("assistant", model.tokenizer.decode(reply.ids, skip_special_tokens=False))]
    with torch.no_grad():
        out = model([history])  # the conversation, the reply as its assistant turn
    start = len(model.tokenize(history[:1]))
    assert out.batch.ids[0][start:start + len(reply.ids)] == reply.ids
    (trained_run,) = out.runs[0]
    assert [p - start for p in trained_run.positions] == run.positions
    assert out.batch.labels[0, trained_run.positions].tolist() == [reply.ids[p] for p in run.positions]
    assert [p - start for p in trained_run.reads] == run.reads  # the reply starts where its labels do
    # float32 rounding only: generation feeds a run through the KV cache in one chunk, the forward
    # takes the whole conversation (states reach |26| with the shipped LoRA; differences ~2e-4)
    assert torch.allclose(out.states[0][0], reply.hidden[run.reads], atol=1e-3)
    assert torch.allclose(out.conditionings[0][0], conditioning, atol=1e-4)

    # the stage's loss is that forward's: its LM loss, and the alignment of that conditioning
    loss = StageLoss(tiny, 1.0)
    target = torch.zeros_like(conditioning)
    monkeypatch.setattr(loss, "target", lambda m, caption: target)  # no decoder needed
    monkeypatch.setattr(loss, "target_mask", lambda m, captions: torch.ones(len(captions), target.shape[0]))
    with torch.no_grad():
        total, logs = loss([Sample(history, [("image", "a red circle")])])
    assert logs["lm"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert logs["mse"] == pytest.approx(F.mse_loss(conditioning, target).item(), rel=1e-3)
    assert total.item() == pytest.approx(logs["lm"] + logs["mse"], rel=1e-5)


def test_a_second_run_reads_its_own_sentence_only(tiny, monkeypatch):
    """With `reads = "reply"`, in "Here is X. [IMG..] Here is Y. [AUD..]" the second run's projector
    reads from the end of the first run, in the training forward and from generation's states alike."""
    model = tiny.model
    projector = model.config.projector.model_copy(update={"reads": "reply"})
    monkeypatch.setattr(model, "config", model.config.model_copy(update={"projector": projector}))
    text = (f"Here is a red circle. {model.signal_string('image')} "
            f"Here is a rising sweep. {model.signal_string('audio')}")
    history = [Turn("user", "draw a red circle and play a rising sweep"), Turn("assistant", text)]
    with torch.no_grad():
        out = model([history])
    first, second = out.runs[0]
    start = len(model.tokenize(history[:1]))
    assert first.reads == list(range(start, first.positions[-1] + 1))
    assert second.reads == list(range(first.positions[-1] + 1, second.positions[-1] + 1))
    assert [s.shape[0] for s in out.states[0]] == [len(first.reads), len(second.reads)]
    # the inference path: the reply's own ids and the forward's states as if generation had kept them
    ids = out.batch.ids[0][start:]
    hidden = model.llm(inputs_embeds=out.batch.inputs_embeds, output_hidden_states=True).hidden_states[-1][0, start:]
    runs = model.find_runs(ids)
    with torch.no_grad():
        made = model.signal_conditioning(history[:1], ids, runs, hidden.detach())
    assert [r.reads for r in runs] == [[p - start for p in first.reads], [p - start for p in second.reads]]
    for got, want in zip(made, out.conditionings[0]):
        assert torch.allclose(got, want, atol=1e-4)
    assert model.reply_text(ids) == "Here is a red circle. Here is a rising sweep."  # one space where a run was


@torch.inference_mode()
def test_a_prompt_is_its_conversation_rendered_with_the_media_spliced_in(tiny, media_dir):
    model = tiny.model
    image = ("image", str(media_dir / "red_square.png"))
    answer = "A red square. " + model.signal_string("image")
    history = [Turn("user", "what is this?", [image]), Turn("assistant", answer), Turn("user", "now play a tone")]
    ids = model.tokenize(history).tolist()
    assert ids == model.tokenizer(model.render(history), add_special_tokens=False).input_ids

    batch = model.prepare_inputs_labels([history, history[:1]])  # two rows, right-padded
    assert batch.inputs_embeds.shape[:2] == batch.labels.shape == (2, len(ids))
    assert batch.attention_mask[1].sum() == len(batch.ids[1]) < len(ids)
    learnt = batch.labels[0][batch.labels[0] != -100].tolist()
    assert model.tokenizer.decode(learnt).startswith(answer)  # the assistant's turn, and only it
    slot = ids.index(model.media_token_id)
    assert torch.allclose(batch.inputs_embeds[0, slot], model.encode_media([image])[0], atol=1e-6)
    assert torch.allclose(batch.inputs_embeds[1, slot], batch.inputs_embeds[0, slot])
    text = [i for i, t in enumerate(ids) if t != model.media_token_id]
    assert torch.equal(batch.inputs_embeds[0, text], model.llm.get_input_embeddings()(torch.tensor(ids)[text]))

    reply = model.tokenizer(answer, add_special_tokens=False).input_ids
    with_reply = model.prepare_inputs_labels([Conversation(history[:1], reply)])
    assert with_reply.prompt_lengths == [len(with_reply.ids[0]) - len(reply)]
    assert with_reply.labels[0, with_reply.prompt_lengths[0]:].tolist() == reply


def _where(pattern: str) -> set[tuple[str, str]]:
    """(file, innermost function) of each line of the project's code matching `pattern` (tests excluded)."""
    hits = set()
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            spans = [(node.lineno, node.end_lineno, node.name) for node in ast.walk(ast.parse(text))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for number, line in enumerate(text.splitlines(), 1):
                if re.search(pattern, line):
                    inside = [s for s in spans if s[0] <= number <= s[1]]
                    name = min(inside, key=lambda s: s[1] - s[0])[2] if inside else "<module>"
                    hits.add((path.relative_to(ROOT).as_posix(), name))
    return hits


def test_media_are_spliced_into_the_embeddings_in_one_place():
    """No second copy of the forward: one function finds the media placeholders in the token ids and
    encodes media for the LLM; one projects encoder outputs; nothing else is a splice."""
    one = {("anygpt/model.py", "prepare_inputs_labels")}
    assert _where(r"media_token_id\s*[=!]=|[=!]=\s*[\w.]*media_token_id|isin\(.*media_token") == one
    assert _where(r"(?<!def )\bencode_media\(") == one
    assert _where(r"\binput_projector\(") == {("anygpt/model.py", "encode_media")}
    assert _where(r"def \w*splice") == set()
    allowed = one | {("anygpt/model.py", name) for name in ("<module>", "__init__", "render", "_processor")} \
        | {("anygpt/llm.py", name) for name in ("<module>", "add_signal_tokens")}
    assert _where(r"media_token_id|MEDIA_TOKEN") <= allowed


@torch.inference_mode()
def test_a_sound_with_windows_takes_a_token_for_itself_and_one_per_window(tiny, media_dir, monkeypatch):
    """`audio_windows`: a sound's placeholders are its whole, its windows and its loudness windows,
    each the encoder's embedding of that part through the input projector; a caption standing for a
    sound fills them all; other modalities keep one."""
    from encoders import audio_loudness, audio_window
    from anygpt.config import audio_windows
    from anygpt.model import CaptionStandIn

    model = tiny.model
    monkeypatch.setattr(model, "config", model.config.model_copy(update={
        "audio_windows": audio_windows("0.5:"), "audio_loudness_windows": audio_windows("0.2:0.6")}))
    sound, image = ("audio", str(media_dir / "tone.wav")), ("image", str(media_dir / "red_square.png"))
    assert model.render([Turn("user", "hi", [sound, image])]).count("<|media|>") == 4
    got = model.encode_media([sound, image, ("audio", CaptionStandIn("a short whistle"))])
    proj, enc = model.input_projector, model.encoder
    tail, loud = audio_window(sound[1], 0.5, None), audio_loudness(sound[1], 0.2, 0.6)
    assert tail.shape == (1, 8000) and loud.shape == (1, 6400)
    want = [enc.encode("audio", [sound[1]]), enc.encode("audio", [tail]), enc.encode("audio", [loud]),
            enc.encode("image", [image[1]])] + [enc.encode_text(["a short whistle"])] * 3
    assert got.shape == (7, proj.proj.out_features)
    for row, emb in zip(got, want):
        assert torch.allclose(row, proj(emb)[0].float(), atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-2)  # the tail is not the whole
    assert not torch.allclose(got[1], got[2], atol=1e-2)  # nor its loudness
    batch = model.prepare_inputs_labels([[Turn("user", "what is this?", [sound])]])
    slots = (batch.input_ids[0] == model.media_token_id).nonzero()[:, 0]
    assert slots.tolist() == [slots[0].item() + i for i in range(3)]
    assert torch.allclose(batch.inputs_embeds[0, slots], got[:3].to(batch.inputs_embeds), atol=1e-6)


@torch.inference_mode()
def test_a_sound_read_apart_takes_its_own_token_and_each_view_from_the_item_given(tiny, media_dir, tmp_path,
                                                                                 monkeypatch):
    """`ViewsApart` (training only): the item's own token is the encoding of `own`, each view's that
    view of the item at its place in `views`, the same as those items' own tokens."""
    import numpy as np
    import soundfile as sf

    from anygpt.config import audio_windows
    from anygpt.model import ViewsApart

    model = tiny.model
    monkeypatch.setattr(model, "config", model.config.model_copy(update={
        "audio_windows": audio_windows("0:0.5"), "audio_loudness_windows": audio_windows("0.5:")}))
    tone = str(media_dir / "tone.wav")  # 1 s at 440 Hz
    t = np.arange(24000) / 16000
    sf.write(tmp_path / "low.wav", 0.5 * np.sin(2 * np.pi * 200 * t), 16000, subtype="PCM_16")
    low = str(tmp_path / "low.wav")
    got = model.encode_media([("audio", ViewsApart(low, (low, tone))), ("audio", tone), ("audio", low)])
    assert got.shape[0] == 9
    tone_rows, low_rows = got[3:6], got[6:9]
    assert torch.allclose(got[0], low_rows[0], atol=1e-5) and torch.allclose(got[1], low_rows[1], atol=1e-5)
    assert torch.allclose(got[2], tone_rows[2], atol=1e-5)
    assert not torch.allclose(got[2], low_rows[2], atol=1e-2)


@torch.inference_mode()
def test_a_clip_takes_a_token_for_its_grey_copy_and_one_for_its_middle_frame(tiny, media_dir, monkeypatch):
    """`video_grey`: a clip's second token is its grey copy's embedding (a grey clip's two are equal);
    `video_still`: the next is its middle frame's, read as a picture."""
    from encoders import grey_video, middle_frame

    model = tiny.model
    monkeypatch.setattr(model, "config", model.config.model_copy(update={"video_grey": True}))
    clip = str(media_dir / "clip.mp4")  # a green square moving right
    assert model.render([Turn("user", "hi", [("video", clip), ("image", clip)])]).count("<|media|>") == 3
    got = model.encode_media([("video", clip), ("video", grey_video(clip))])
    proj, enc = model.input_projector, model.encoder
    assert torch.allclose(got[1], proj(enc.encode("video", [grey_video(clip)]))[0].float(), atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-2)
    assert torch.allclose(got[2], got[3], atol=1e-5) and torch.allclose(got[1], got[2], atol=1e-5)

    monkeypatch.setattr(model, "config", model.config.model_copy(update={"video_still": True}))
    frame = middle_frame(clip)
    r, g, b = frame[30, 2 + 3 * 8 + 10].tolist()  # frame 8 of 16: the green square's centre there
    assert frame.shape == (64, 64, 3) and g > 150 and r < 100 and b < 100 and not frame[30, 5].any()
    got = model.encode_media([("video", clip)])
    assert got.shape[0] == model.slots("video") == 3
    assert torch.allclose(got[2], proj(enc.encode("image", [frame]))[0].float(), atol=1e-5)
