"""Training commands: a few steps each on tiny data and a tiny backbone built in code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anygpt import AnyGPT
from anygpt.config import AnyGPTConfig
from anygpt.data import toyworld
from anygpt.data.dialogs import make_dialogs, read_dialogs
from anygpt.errors import InputError
from anygpt.train.stages import tokenize_sample, stage3_samples, train_stage


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    manifest = toyworld.make_dataset(d, n_per_modality=6, seed=0)
    make_dialogs(manifest, 12, seed=0)
    return d


def test_dialogs_render_with_signal_tokens_and_masked_labels(tiny, toy_data):
    dialogs = read_dialogs(toy_data / "dialogs.jsonl")
    samples = stage3_samples(tiny.model, dialogs)
    made = [s for s in samples if s.outputs]
    assert made, "the instruction set asks for outputs"
    ids, labels = tokenize_sample(tiny.model, made[0])
    runs = tiny.model.find_runs(ids.tolist())
    assert [r.modality for r in runs] == [m for m, _ in made[0].outputs]
    learned = labels[labels != -100].tolist()
    for r in runs:  # signal tokens are learned, the user's words are not
        assert all(ids[p].item() in learned for p in r.positions)
    user_text = tiny.model.tokenizer(made[0].turns[0].text, add_special_tokens=False).input_ids
    assert not set(user_text) <= set(learned)


def test_a_world_sounds_length_words_are_not_learnt_and_the_rest_is(tiny, toy_data, tmp_path):
    """`unlearn_lengths`: the answer's length word gets label -100, every other token of the answer
    keeps its label; a sample without a sound, or a novel sound's answer, is left whole."""
    from anygpt.model import Turn
    from anygpt.train.stages import Sample, unlearn_lengths

    tok = tiny.model.tokenizer
    sound = Sample([Turn("user", "describe this sound.", [("audio", "x.wav")]),
                    Turn("assistant", "It is a long rising sweep, not a short one.")])
    ids, labels = tokenize_sample(tiny.model, sound)
    ids2, labels2 = tokenize_sample(tiny.model, unlearn_lengths(sound))
    assert torch.equal(ids, ids2)
    dropped = [tok.decode([i]).strip() for i, a, b in zip(ids.tolist(), labels, labels2) if a != -100 and b == -100]
    assert dropped == ["long", "short"]
    kept = [tok.decode([i]).strip() for i, b in zip(ids.tolist(), labels2) if b != -100]
    assert "rising" in kept and "sweep" in kept and "It" in kept
    picture = Sample([Turn("user", "what is drawn here?", [("image", "x.png")]), Turn("assistant", "A long red bar.")])
    assert unlearn_lengths(picture) is picture
    assert torch.equal(tokenize_sample(tiny.model, picture)[1], tokenize_sample(tiny.model, unlearn_lengths(picture))[1])
    with pytest.raises(ValueError, match="stage 1 on dialogs"):
        train_stage(1, toy_data / "manifest.jsonl", tmp_path / "run", init=tmp_path, length_from_novel=True)


def test_novel_sounds_apart_are_heard_at_the_other_length_but_in_the_told_views(tmp_path):
    """`novel_sound_samples(apart=...)`: every other sound's own token and untold views are read from
    the same sound at the other length class, its told views (the loudness tail) from the sound
    the answer describes; the rest are plain paths."""
    import soundfile as sf

    from anygpt.data import toyworld as tw
    from anygpt.model import ViewsApart
    from anygpt.train.stages import novel_sound_samples

    samples = novel_sound_samples(6, tmp_path, seed=0, kinds=("drone", "siren"), learn_kinds=False,
                                  apart=(False, True))
    apart = [s for s in samples if isinstance(s.turns[0].media[0][1], ViewsApart)]
    assert len(apart) == 3
    for s in samples:
        item = s.turns[0].media[0][1]
        told = "long" if " long " in s.turns[1].text else "short"
        heard = item.views[1] if isinstance(item, ViewsApart) else item
        lo, hi = tw.LENGTHS[told]
        assert lo - 0.01 <= sf.info(heard).duration <= hi + 0.01
        if isinstance(item, ViewsApart):
            assert item.own == item.views[0] != item.views[1]
            lo, hi = tw.LENGTHS["short" if told == "long" else "long"]
            assert lo - 0.01 <= sf.info(item.own).duration <= hi + 0.01


def test_a_made_sounds_length_words_are_not_learnt_and_its_signal_tokens_are(tiny, toy_data, tmp_path):
    """`unlearn_made_lengths`: in a reply that makes a sound, the length word gets label -100 and the
    rest (words, signal tokens) keeps its label; a reply that makes a picture is left whole."""
    from anygpt.model import Turn
    from anygpt.train.stages import Sample, unlearn_made_lengths

    tok = tiny.model.tokenizer
    reply = "Here is a short rising sweep. " + tiny.model.signal_string("audio")
    sound = Sample([Turn("user", "play a short rising sweep"), Turn("assistant", reply)],
                   [("audio", "a short rising sweep")])
    ids, labels = tokenize_sample(tiny.model, sound)
    ids2, labels2 = tokenize_sample(tiny.model, unlearn_made_lengths(sound))
    assert torch.equal(ids, ids2)
    dropped = [tok.decode([i]).strip() for i, a, b in zip(ids.tolist(), labels, labels2) if a != -100 and b == -100]
    assert dropped == ["short"]
    run = tiny.model.find_runs(ids.tolist())[0]
    assert all(labels2[p] == ids[p] for p in run.positions)
    picture = Sample([Turn("user", "draw a long red bar"),
                      Turn("assistant", "Here is a long red bar. " + tiny.model.signal_string("image"))],
                     [("image", "a long red bar")])
    assert unlearn_made_lengths(picture) is picture
    with pytest.raises(ValueError, match="stage-3 option"):
        train_stage(1, toy_data / "manifest.jsonl", tmp_path / "run", init=tmp_path, made_lengths_unlearnt=True)


def test_novel_sounds_can_teach_their_length_and_not_their_kind(tiny, tmp_path):
    """`novel_kinds_unlearnt`: a novel sound's answer keeps its length word learnt, its kind words not."""
    from anygpt.train.stages import novel_sound_samples

    tok = tiny.model.tokenizer
    told, untold = (novel_sound_samples(6, tmp_path / "novel", 0, learn_kinds=learn) for learn in (True, False))
    for a, b in zip(told, untold):
        assert a.turns[1].text == b.turns[1].text and a.turns[0].media == b.turns[0].media
        ids, labels = tokenize_sample(tiny.model, a)
        ids2, labels2 = tokenize_sample(tiny.model, b)
        assert torch.equal(ids, ids2)
        dropped = tok.decode([i for i, x, y in zip(ids.tolist(), labels, labels2) if x != -100 and y == -100]).strip()
        kind, length = b.turns[1].unlearnt[0], a.turns[1].text.split()[1]
        assert dropped == kind and kind in toyworld.NOVEL_SOUNDS
        assert length in tok.decode([i for i, y in zip(ids2.tolist(), labels2) if y != -100])


def test_request_dialogs_ask_for_the_caption_and_reply_before_the_signal_tokens(tiny, toy_data):
    """The refit's extra requests look like inference: the manifest caption asked for in a training
    wording, a reply naming the attributes, then the signal tokens; the caption is the target."""
    import numpy as np

    from anygpt.data.dialogs import MAKE, request_dialog
    from anygpt.data.manifest import read_manifest

    examples = [e for e in read_manifest(toy_data / "manifest.jsonl", check_files=False) if e["modality"] == "image"]
    rng = np.random.default_rng(0)
    for e in examples:
        dialog = request_dialog(rng, e)
        user, reply = dialog["turns"]
        assert e["caption"] in user["text"] and any(
            user["text"] == ask.format(desc=e["caption"]) for ask in MAKE["image"]["train"])
        assert e["attributes"]["color"] in reply["text"] and e["attributes"]["shape"] in reply["text"]
        assert reply["outputs"] == [{"modality": "image", "caption": e["caption"], "at": len(reply["text"])}]
    sample = stage3_samples(tiny.model, [dialog])[0]
    assert sample.outputs == [("image", examples[-1]["caption"])]
    text = sample.turns[-1].text
    assert text.startswith(reply["text"]) and text.endswith(tiny.model.signal_string("image"))


def test_each_run_follows_the_sentence_that_names_it(tiny, tmp_path):
    """A two-output reply is written "Here is X. [IMG..] Here is Y. [AUD..]" (NExT-GPT's form), so the
    LLM learns to make each item where it names it; an output without `at` goes after the words."""
    manifest = toyworld.make_dataset(tmp_path, n_per_modality=4, seed=0)
    dialogs = read_dialogs(make_dialogs(manifest, 60, seed=3, mix={"make": 1.0}))
    two = [d for d in dialogs if len(d["turns"][1]["outputs"]) == 2]
    assert two, "some requests ask for two items"
    reply = two[0]["turns"][1]
    first, second = reply["outputs"]
    assert 0 < first["at"] < second["at"] == len(reply["text"])
    assert first["caption"] in reply["text"][:first["at"]] and first["caption"] not in reply["text"][first["at"]:]
    text = stage3_samples(tiny.model, [two[0]])[0].turns[-1].text
    sig = [tiny.model.signal_string(o["modality"]) for o in (first, second)]
    assert text == f'{reply["text"][:first["at"]]} {sig[0]}{reply["text"][first["at"]:]} {sig[1]}'
    ids, _ = tokenize_sample(tiny.model, stage3_samples(tiny.model, [two[0]])[0])
    assert [r.modality for r in tiny.model.find_runs(ids.tolist())] == [first["modality"], second["modality"]]
    del first["at"], second["at"]  # older files: after the words, in order
    assert stage3_samples(tiny.model, [two[0]])[0].turns[-1].text == f"{reply['text']} {sig[0]} {sig[1]}"


def test_an_output_offset_outside_its_text_is_refused(tmp_path):
    bad = {"id": "x", "kind": "make", "turns": [{"role": "user", "text": "draw"},
           {"role": "assistant", "text": "Here.", "outputs": [{"modality": "image", "caption": "c", "at": 9}]}]}
    (tmp_path / "dialogs.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError, match="line 1.*'at' 9"):
        read_dialogs(tmp_path / "dialogs.jsonl")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_runs_loss_falls_and_resumes(tiny_backbone_config, toy_data, tmp_path, stage):
    data = toy_data / ("dialogs.jsonl" if stage == 3 else "manifest.jsonl")
    kwargs = dict(config=tiny_backbone_config, steps=12, batch_size=2, lr=3e-3, limit=2, seed=0)
    first = train_stage(stage, data, tmp_path, max_steps=6, **kwargs)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 6
    second = train_stage(stage, data, tmp_path, **kwargs)
    assert second["resumed_from"] == 6 and second["steps"] == 12
    assert second["final_loss"] < first["first_loss"]
    model = AnyGPT.from_pretrained(tmp_path / "model")
    assert model.trained and (stage < 3 or model.config.lora.enabled)
    saved = load_file(tmp_path / "model" / "anygpt.safetensors")
    assert saved["signal_rows.input"].shape[0] == 6 + 1  # 2 per modality + the media placeholder


def test_tiny_encoder_training_smoke(toy_data, tmp_path):
    from anygpt.train.tiny_encoder import train_tiny_encoder

    summary = train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path, steps=2, batch_size=4, per_modality=6,
                                 neutral_weight=1.0, novel_audio=4, novel_kinds=("siren", "noise band"))
    assert summary["steps"] == 2 and (tmp_path / "encoder" / "model.safetensors").is_file()


def test_tiny_encoder_fine_tune_trains_only_the_named_towers(toy_data, tmp_path):
    from anygpt.train.tiny_encoder import train_tiny_encoder
    from encoders import ImageBindEncoder

    start = tmp_path / "start"
    ImageBindEncoder.tiny(seed=3).save_pretrained(start)
    train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "run", steps=2, batch_size=4, per_modality=6,
                       init=str(start), modalities=("depth",))
    before, after = load_file(start / "model.safetensors"), load_file(tmp_path / "run" / "encoder" / "model.safetensors")
    moved = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"depth"}  # the text tower, and so every other modality's embedding, is as it was
    with pytest.raises(ValueError, match="modalities"):
        train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "bad", steps=1, modalities=("smell",))



def test_the_length_words_pull_brings_sounds_to_the_words_margin(toy_data, tmp_path):
    """--length-words-weight: along the reader fitted on captions of sounds the world lacks, each sound
    moves toward the margin at which those captions say its length (the pull's own loss falls)."""
    import torch.nn.functional as F

    from anygpt.data.manifest import read_manifest
    from anygpt.eval.benchmark import word_captions, word_reader
    from anygpt.train.tiny_encoder import train_tiny_encoder
    from encoders import ImageBindEncoder

    start = tmp_path / "start"
    ImageBindEncoder.tiny(seed=3).save_pretrained(start)
    sounds = [e for e in read_manifest(toy_data / "manifest.jsonl") if e["modality"] == "audio"]
    target = torch.tensor([1.0 if e["attributes"]["length"] == "long" else -1.0 for e in sounds])

    def pull(folder):
        enc = ImageBindEncoder.from_pretrained(folder, dtype=torch.float32).eval()
        w, b = word_reader(enc.encode_text, "audio")
        words = F.normalize(enc.encode_text(word_captions("audio")[0]), dim=-1) @ w + b
        margin = (words[:, 1] - words[:, 0]).abs().mean()
        score = F.normalize(enc.encode("audio", [e["path"] for e in sounds]), dim=-1) @ w + b
        return float((((score[:, 1] - score[:, 0]) - target * margin) / margin).pow(2).mean())

    train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "run", steps=12, batch_size=6, per_modality=6,
                       init=str(start), modalities=("audio",), length_words_weight=50.0, lr=3e-3,
                       change_fraction=0.0)
    assert pull(tmp_path / "run" / "encoder") < 0.5 * pull(start)
    with pytest.raises(ValueError, match="init encoder"):
        train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "bad", steps=1, length_words_weight=1.0)

def test_novel_kinds_option_reads_a_list_or_the_recipe():
    from anygpt.data.toyworld import NOVEL_LINES, NOVEL_SOUNDS
    from apps.cli import _novel_kinds

    assert _novel_kinds(" siren, drone ,") == ("siren", "drone")
    recipe = _novel_kinds("recipe")
    assert set(recipe) == set(NOVEL_SOUNDS + NOVEL_LINES) - {"crackle"} and len(recipe) == 11


def test_novel_sounds_join_the_audio_pool_with_their_own_classes():
    from anygpt.data.toyworld import novel_sounds
    from anygpt.train.tiny_encoder import build_pools
    from encoders import ImageBindEncoder

    items = novel_sounds(6, seed=0)
    assert [i["caption"] for i in items] == [i["caption"] for i in novel_sounds(6, seed=0)]  # seeded
    world = [{"modality": "audio", "array": toyworld.render(spec), "caption": "a low tone", "attributes": spec.labels()}
             for spec in [toyworld.sample_audio(np.random.default_rng(i), kind="low tone") for i in range(2)]]
    pool = build_pools(ImageBindEncoder.tiny(seed=0), world, per_modality=1, extra=items)["audio"]
    assert len(pool.inputs) == 1 + 6
    kinds = {i["attributes"]["kind"] for i in items}
    assert len(pool.phrases["kind"]) == 1 + len(kinds) and len(set(pool.labels.tolist())) == 1 + len(
        {(i["attributes"]["kind"], i["attributes"]["length"]) for i in items})



def test_world_sounds_can_be_left_untold_their_length():
    """`length_from_extra`: the world's sounds lose their length words and sit out the length view;
    the novel sounds keep both, so only kinds that come at both lengths teach it."""
    from anygpt.data.toyworld import novel_sounds
    from anygpt.train.tiny_encoder import build_pools, without_length
    from encoders import ImageBindEncoder

    assert without_length("a brief upward sweep") == "an upward sweep"
    assert without_length("a recording of a lengthy hiss of white noise") == "a recording of a hiss of white noise"
    assert without_length("A long clip of an organ note") == "A clip of an organ note"
    items = novel_sounds(4, seed=0)
    world = [{"modality": "audio", "array": toyworld.render(spec), "caption": "a recording of a long low tone",
              "attributes": spec.labels()}
             for spec in [toyworld.sample_audio(np.random.default_rng(i), kind="low tone") for i in range(2)]]
    encoder = ImageBindEncoder.tiny(seed=0)
    told = build_pools(encoder, world, per_modality=2, extra=items)["audio"]
    untold = build_pools(encoder, world, per_modality=2, extra=items, length_from_extra=True)["audio"]
    assert untold.views["length"][1].tolist()[:2] == [-1, -1] and min(told.views["length"][1].tolist()) >= 0
    assert untold.views["length"][1].tolist()[2:] == told.views["length"][1].tolist()[2:]
    assert torch.equal(untold.views["kind"][1], told.views["kind"][1])
    assert torch.equal(untold.tokens[0], encoder.tokenize(["a recording of a low tone"])[0])
    assert torch.equal(untold.tokens[2:], told.tokens[2:])


def test_fresh_towers_start_anew_and_need_an_encoder_to_keep_the_rest(toy_data, tmp_path):
    from anygpt.train.tiny_encoder import train_tiny_encoder
    from encoders import ImageBindEncoder

    start = tmp_path / "start"
    ImageBindEncoder.tiny(seed=3).save_pretrained(start)
    train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "run", steps=1, batch_size=4, per_modality=6,
                       init=str(start), modalities=("audio",), fresh_towers=True, length_from_novel=True,
                       audio_pad="fbank", novel_audio=4, seed=5, lr=1e-9)
    before, after = load_file(start / "model.safetensors"), load_file(tmp_path / "run" / "encoder" / "model.safetensors")
    fresh = ImageBindEncoder.tiny(seed=5).model.state_dict()
    audio = [k for k in before if k.split(".")[1] == "audio"]
    assert audio and all(torch.allclose(after[k], fresh[k], atol=1e-6) for k in audio)  # seed 5's, not the init's
    assert not all(torch.equal(before[k], after[k]) for k in audio)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in audio)
    assert ImageBindEncoder.from_pretrained(tmp_path / "run" / "encoder").config.audio_pad == "fbank"
    with pytest.raises(ValueError, match="init"):
        train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "bad", steps=1, fresh_towers=True)
    with pytest.raises(ValueError, match="audio_pad"):
        train_tiny_encoder(toy_data / "manifest.jsonl", tmp_path / "bad", steps=1, init=str(start), audio_pad="loud")


@pytest.mark.slow
def test_tiny_decoder_training_smoke(toy_data, tmp_path):
    from anygpt.train.tiny_decoders import train_tiny_image_and_video
    from decoders import ImageDecoder, VideoDecoder

    train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path, vae_steps=2, image_steps=2, video_steps=2,
                               batch_size=4, video_batch_size=2, init_vae=None)
    assert ImageDecoder.from_pretrained(tmp_path / "image").conditioning.shape == (16, 384)
    assert VideoDecoder.from_pretrained(tmp_path / "video").conditioning.shape == (16, 384)


def test_an_inflated_video_unet_starts_as_the_image_unet_on_each_frame():
    """ModelScope's start: spatial layers from the image UNet, temporal layers the identity, so the
    untrained video UNet predicts, frame by frame, exactly what the image UNet predicts."""
    from anygpt.train.tiny_decoders import inflate_image_unet
    from decoders import ImageDecoder, VideoDecoder

    # 64-wide blocks: there diffusers' 2D and 3D UNets split attention into the same 8 heads of 8
    image = ImageDecoder.tiny(seed=1, channels=(64, 64)).pipeline.unet
    video = VideoDecoder.tiny(seed=2, channels=(64, 64)).pipeline.unet
    assert inflate_image_unet(video, image) > 50
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 3, 8, 8, generator=g)  # [B, C, F, h, w]
    text = torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        got = video(latents, t, encoder_hidden_states=text).sample
        frames = latents.movedim(2, 1).flatten(0, 1)  # [B*F, C, h, w]
        want = image(frames, t.repeat_interleave(3), encoder_hidden_states=text.repeat_interleave(3, 0)).sample
    torch.testing.assert_close(got.movedim(2, 1).flatten(0, 1), want, atol=1e-4, rtol=1e-4)

    other = ImageDecoder.tiny(seed=1, channels=(16, 32)).pipeline.unet
    with pytest.raises(ValueError, match="channels"):
        inflate_image_unet(video, other)


def test_video_decoder_training_from_an_image_decoder_smoke(toy_data, tmp_path):
    """Two steps of the CPU video recipe: the video UNet grown from an image decoder folder (its VAE,
    channels and spatial weights), trained on cached frame latents and frozen-MiniLM states."""
    from anygpt.train.tiny_decoders import train_tiny_image_and_video
    from decoders import ImageDecoder, VideoDecoder

    image = ImageDecoder.tiny(seed=3, text_encoder="minilm", channels=(64, 64), vae_channels=(8, 16, 16, 16))
    image.save_pretrained(tmp_path / "image-init")
    summary = train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path, video_steps=2, video_batch_size=2,
                                         parts=("video",), video_init=str(tmp_path / "image-init"))
    assert summary["video"]["steps"] == 2
    video = VideoDecoder.from_pretrained(tmp_path / "video")
    assert video.conditioning.shape == (16, 384)
    assert list(video.pipeline.unet.config.block_out_channels) == [64, 64]
    vae_weight = image.pipeline.vae.encoder.conv_in.weight
    assert torch.equal(video.pipeline.vae.encoder.conv_in.weight, vae_weight.to(video.pipeline.vae.dtype))
    clip = video.decode(video.encode_text(["a red circle moving up"]), seeds=[0], num_frames=3,
                        num_inference_steps=2, guidance_scale=4.0)[0]
    assert clip.frames.shape == (3, 64, 64, 3)

    # continued from that folder with the zero-terminal-SNR schedule: same UNet to start, new schedule kept
    train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path / "more", video_steps=1, video_batch_size=2,
                               parts=("video",), video_from=str(tmp_path / "video"), zero_snr=True)
    more = VideoDecoder.from_pretrained(tmp_path / "more" / "video")
    assert more.pipeline.scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(more.pipeline.vae.encoder.conv_in.weight, video.pipeline.vae.encoder.conv_in.weight)
    with pytest.raises(ValueError, match="not both"):
        train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path / "both", parts=("video",),
                                   video_from=str(tmp_path / "video"), video_init=str(tmp_path / "image-init"))


def test_video_decoder_with_stacked_frames_smoke(toy_data, tmp_path):
    """Two steps of the video recipe with the frame-stack UNet: grown from the image decoder's UNet
    (same inner weights to start), saved as a FrameStackUNet for the data's clip length."""
    from anygpt.train.tiny_decoders import train_tiny_image_and_video
    from decoders import ImageDecoder, VideoDecoder
    from decoders.frame_stack import FrameStackUNet

    image = ImageDecoder.tiny(seed=3, text_encoder="minilm", channels=(64, 64), vae_channels=(8, 16, 16, 16))
    image.save_pretrained(tmp_path / "image-init")
    summary = train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path, video_steps=2, video_batch_size=2,
                                         parts=("video",), video_init=str(tmp_path / "image-init"),
                                         video_frame_stack=True, zero_snr=True)
    assert summary["video"]["steps"] == 2
    video = VideoDecoder.from_pretrained(tmp_path / "video")
    unet = video.pipeline.unet
    assert isinstance(unet, FrameStackUNet) and unet.config.num_frames == 8  # the toy clips' length
    assert video.pipeline.scheduler.config.prediction_type == "v_prediction"
    trained = unet.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight
    start = image.pipeline.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert trained.shape == start.shape and not torch.equal(trained, start)  # grown from it, then trained
    assert (trained - start).abs().max() < 0.05
    clip = video.decode(video.encode_text(["a red circle moving up"]), seeds=[0], num_inference_steps=2,
                        guidance_scale=4.0)[0]
    assert clip.frames.shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="video_frame_stack builds a new video UNet"):
        train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path / "both", parts=("video",),
                                   video_from=str(tmp_path / "video"), video_frame_stack=True)


def test_zero_terminal_snr_trains_v_and_samples_from_pure_noise(tmp_path, monkeypatch):
    """The schedule ends in pure noise (no residual signal for the UNet to read a layout from), sampling
    starts at that last step, the UNet learns v, and the folder keeps all three."""
    from diffusers import DDPMScheduler

    from anygpt.train.tiny_decoders import train_conditioned_unet, zero_terminal_snr
    from decoders import ImageDecoder

    decoder = ImageDecoder.tiny(seed=0)
    assert decoder.pipeline.scheduler.alphas_cumprod[-1] > 1e-3  # Stable Diffusion's: 0.0047 left
    zero_terminal_snr(decoder)
    scheduler = decoder.pipeline.scheduler
    assert scheduler.alphas_cumprod[-1] < 1e-6
    scheduler.set_timesteps(10)
    assert int(scheduler.timesteps[0]) == 999

    targets = []
    velocity = DDPMScheduler.get_velocity

    def recorded_velocity(self, *args):  # the training target, kept to check it is v
        targets.append(velocity(self, *args))
        return targets[-1]

    monkeypatch.setattr(DDPMScheduler, "get_velocity", recorded_velocity)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    summary = train_conditioned_unet("image-unet", decoder, latents, ["a red circle", "a blue square"] * 2,
                                     tmp_path, steps=2, batch_size=2, seed=0)
    assert summary["steps"] == 2 and len(targets) == 2 and targets[0].shape == (2, 4, 8, 8)

    decoder.save_pretrained(tmp_path / "image")
    loaded = ImageDecoder.from_pretrained(tmp_path / "image")
    config = loaded.pipeline.scheduler.config
    assert (config.prediction_type, config.timestep_spacing, config.rescale_betas_zero_snr) == \
        ("v_prediction", "trailing", True)
    image = loaded.decode(loaded.encode_text(["a red circle"]), seeds=[0], num_inference_steps=2,
                          guidance_scale=4.0)[0]
    assert np.asarray(image.image).shape == (64, 64, 3)


def test_image_decoder_training_resumes_with_its_ema(toy_data, tmp_path):
    """Cached latents and frozen-MiniLM states, EMA weights in the checkpoint: a re-run with more
    steps resumes from the last one (its EMA too), and the folder holds the EMA weights."""
    from safetensors.torch import load_file

    from anygpt.train.tiny_decoders import train_tiny_image_and_video
    from decoders import ImageDecoder

    first = train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path, image_steps=4, max_steps=2,
                                       batch_size=4, parts=("image",), init_vae=None, vae_steps=1)
    assert first["image"]["resumed_from"] == 0
    saved = load_file(tmp_path / "image-unet-run" / "checkpoint" / "extra.safetensors")
    assert int(saved["ema.step"]) == 2
    second = train_tiny_image_and_video(toy_data / "manifest.jsonl", tmp_path, image_steps=4, batch_size=4,
                                        parts=("image",), init_vae=None, vae_steps=1)
    assert second["image"]["resumed_from"] == 2 and second["image"]["steps"] == 4
    unet = ImageDecoder.from_pretrained(tmp_path / "image").pipeline.unet
    ema = load_file(tmp_path / "image-unet-run" / "checkpoint" / "extra.safetensors")
    assert int(ema["ema.step"]) == 4
    assert torch.equal(next(iter(unet.parameters())), ema["ema.0"])


def test_tiny_audio_training_smoke(toy_data, tmp_path):
    from anygpt.train.tiny_decoders import train_tiny_audio
    from decoders import AudioDecoder

    summary = train_tiny_audio(toy_data / "manifest.jsonl", tmp_path, vae_steps=1, vae_decoder_steps=2,
                               unet_steps=1, batch_size=2)
    assert set(summary) == {"vae", "vae-decoder", "unet"} and summary["vae-decoder"]["steps"] == 2
    decoder = AudioDecoder.from_pretrained(tmp_path / "audio")
    assert decoder.conditioning.shape == (1, 384) and type(decoder.pipeline.vocoder).__name__ == "GriffinLimVocoder"

    # the VAE's decoder alone, further: the encoder (so the UNet's latents) and the UNet stay as they were
    again = train_tiny_audio(toy_data / "manifest.jsonl", tmp_path / "again", parts=("vae-decoder",),
                             init=tmp_path / "audio", vae_decoder_steps=2, batch_size=2)
    assert set(again) == {"vae-decoder"}
    after = AudioDecoder.from_pretrained(tmp_path / "again" / "audio").pipeline
    before = decoder.pipeline
    for kept in ("encoder", "quant_conv"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(before.vae, kept).parameters(),
                                                     getattr(after.vae, kept).parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before.unet.parameters(), after.unet.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before.vae.decoder.parameters(), after.vae.decoder.parameters()))
    with pytest.raises(ValueError, match="vae-decoder"):
        train_tiny_audio(toy_data / "manifest.jsonl", tmp_path / "bad", parts=("vae", "vae-decoder"),
                         init=tmp_path / "audio")

    # the UNet alone, with sounds of kinds the world does not have beside the world's
    novel = train_tiny_audio(toy_data / "manifest.jsonl", tmp_path / "novel", parts=("unet",), init=tmp_path / "audio",
                             unet_steps=1, batch_size=2, novel_audio=3, novel_kinds=("siren", "drone"))
    sounds = novel["unet"]["sounds"]
    assert (sounds["world"], sounds["novel"]) == (summary["unet"]["sounds"]["world"], 3)
    assert set(sounds["novel_kinds"]) <= {"siren", "drone"} and sounds["novel_kinds"]
    assert summary["unet"]["sounds"]["novel"] == 0
    with pytest.raises(ValueError, match="novel_audio"):
        train_tiny_audio(toy_data / "manifest.jsonl", tmp_path / "bad", parts=("vae-decoder",),
                         init=tmp_path / "audio", novel_audio=3)


def test_export_writes_half_precision_parts_with_their_recipe(toy_data, tmp_path):
    from anygpt.config import resolve_path, weights_dir
    from anygpt.train.export import export_part
    from decoders import ImageDecoder
    from encoders import ImageBindEncoder

    ImageBindEncoder.tiny(seed=3).save_pretrained(tmp_path / "run-encoder")
    ImageDecoder.tiny(seed=3).save_pretrained(tmp_path / "run-image")
    out = tmp_path / "weights"
    for part in ("encoder", "image"):
        export_part(part, tmp_path / f"run-{part}", out, commands=[f"anygpt train {part}"], data=toy_data)
    record = json.loads((out / "weights.json").read_text())
    assert set(record) == {"encoder", "image"} and record["image"]["data"]["seed"] == 0
    assert all(len(h) == 64 for h in record["image"]["files"].values())
    assert load_file(out / "encoder" / "model.safetensors")["modality_heads.vision.2.weight"].dtype \
        == torch.float16
    original = ImageBindEncoder.tiny(seed=3)
    shipped = ImageBindEncoder.from_pretrained(out / "encoder", dtype=torch.float32)
    image = (toy_data / "images" / "000000.png")
    assert torch.allclose(original.encode("image", [image]), shipped.encode("image", [image]), atol=1e-2)
    assert resolve_path("anygpt:tiny/image") == weights_dir() / "tiny" / "image"


def test_grey_copies_keep_the_layout_and_drop_the_colour():
    from anygpt.train.tiny_encoder import grey

    image = torch.rand(2, 3, 8, 8)  # [N, C, H, W]
    video = torch.rand(2, 5, 3, 2, 8, 8)  # [N, clips, C, T, H, W]
    for x, channels in ((image, 1), (video, 2)):
        g = grey(x)
        assert g.shape == x.shape
        assert torch.allclose(g.select(channels, 0), g.select(channels, 2))
        assert torch.allclose(g.select(channels, 1), x.mean(channels))


def test_audio_view_copies_keep_what_the_view_names_and_never_make_a_length_class():
    """Cut copies (kind view) keep the start of the sound and end below every length class; flattened
    copies (length view) keep the sound's frames and padding and lose the spectrum."""
    from anygpt.data import toyworld as tw
    from anygpt.train.tiny_encoder import CUT_SECONDS, cut_short, flatten_spectrum
    from encoders import ImageBindEncoder

    assert CUT_SECONDS[1] < min(lo for lo, _ in tw.LENGTHS.values())  # a cut copy is neither short nor long
    encoder = ImageBindEncoder.tiny()
    encoder.config.audio_pad = "fbank"  # data.py's padding, whose last frame is the padding (see cut_short)
    spec = tw.sample("audio", tw.example_rng(5, "train", "audio", 0), "train", kind="falling sweep", length="long")
    x = encoder.prepare("audio", [tw.render(spec)])  # [1, clips, 1, mel, time]
    pad = x[0, 0, 0, :, -1]

    def sound_frames(fbank):  # frames before the padding starts
        return int((~(fbank[0, 0, 0] == fbank[0, 0, 0, :, -1:]).all(0)).nonzero().max()) + 1

    frames = sound_frames(x)
    assert abs(frames - spec.duration * 100) <= 2  # 10-ms frames
    cut = cut_short(x, torch.tensor([0.6]))
    assert sound_frames(cut) == 60 and torch.equal(cut[..., :60], x[..., :60])
    assert torch.equal(cut[0, 0, 0, :, 60:], pad[:, None].expand(-1, x.shape[-1] - 60))
    assert torch.equal(cut_short(x, torch.tensor([3.0])), x)  # longer than the sound: unchanged

    flat = flatten_spectrum(x)
    assert flat.shape == x.shape and sound_frames(flat) == frames
    assert torch.allclose(flat[0, 0, 0, 0], flat[0, 0, 0, -1]) and torch.allclose(flat[0, 0, 0, 0], x[0, 0, 0].mean(0))
    assert x[0, 0, 0, :, :frames].std(0).mean() > 0.1  # the original has a spectrum to lose


def test_neutral_loss_is_least_for_copies_equally_near_every_value():
    """A cut sound has no length: its pull is least when it is as near "a short sound" as "a long sound"
    (the uniform target's entropy, log 2) and grows as it leans to either."""
    import math

    from anygpt.train.tiny_encoder import NEUTRAL_CHANGES, neutral_loss

    assert NEUTRAL_CHANGES["audio"] == {"length": "cut", "kind": "flat"}
    phrases = torch.eye(4)[:2]  # two values' phrase embeddings
    between = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 1.0, 0.5, 0]])  # as near one as the other
    leaning = torch.tensor([[1.0, 0.3, 0, 0], [0.2, 1.0, 0, 0]])
    assert math.isclose(neutral_loss(between, phrases).item(), math.log(2), rel_tol=1e-5)
    assert neutral_loss(leaning, phrases).item() > math.log(2) + 0.5
    x = torch.tensor([[1.0, 0.3, 0, 0]], requires_grad=True)
    neutral_loss(x, phrases).backward()
    assert x.grad[0, 1] < 0 < x.grad[0, 0]  # a step down the gradient evens the two similarities


def test_depth_view_copies_keep_what_the_view_names_and_never_make_a_distance_class():
    """Levelled copies (shape view) keep the outline at a disparity between far and near; redrawn copies
    (distance view) keep the disparity and size and lose the toy-world shape."""
    from anygpt.data import toyworld as tw
    from anygpt.eval.probes import probe_depth
    from anygpt.train.tiny_encoder import LEVEL_DISPARITY, level_depth, reshape_object
    from encoders import ImageBindEncoder
    from encoders.preprocess import DEPTH_MAX_DISPARITY, DEPTH_MEAN, DEPTH_STD

    assert tw.DISPARITY["far"][1] < LEVEL_DISPARITY < tw.DISPARITY["near"][0]  # neither near nor far
    spec = tw.sample("depth", tw.example_rng(5, "train", "depth", 0), "train", shape="triangle", distance="far")
    x = ImageBindEncoder.tiny().prepare("depth", [tw.render(spec)])  # [1, 1, 224, 224]
    disparity = lambda t: (t[0, 0] * DEPTH_STD + DEPTH_MEAN) * DEPTH_MAX_DISPARITY  # undo the preprocessing
    assert probe_depth(disparity(x).numpy()) == {"shape": "triangle", "distance": "far"}
    inside = (disparity(x) - round(spec.disparity)).abs() < 1e-3  # fully covered pixels
    background = x[0, 0] == x.min()  # the preprocessing clamps the background to one floor value

    level = level_depth(x)
    assert level.shape == x.shape
    assert torch.allclose(disparity(level)[inside], torch.tensor(LEVEL_DISPARITY), atol=0.05)
    assert background.float().mean() > 0.5 and torch.equal(level[0, 0][background], x[0, 0][background])
    assert probe_depth(disparity(level).numpy())["shape"] == "triangle"

    for seed in range(4):
        redrawn = disparity(reshape_object(x, np.random.default_rng(seed)))
        assert abs(redrawn.max().item() - disparity(x).max().item()) < 1e-3  # the same distance
        assert torch.allclose(redrawn.min(), disparity(x).min())  # the same background
        covered, was = (redrawn > 3).sum().item(), (disparity(x) > 3).sum().item()
        assert 0.15 * was < covered < 1.5 * was and not torch.equal(redrawn > 0.05, disparity(x) > 0.05)
        ys, xs = (redrawn > 3).nonzero(as_tuple=True)
        assert max(ys.float().std(), xs.float().std()) > 1.3 * min(ys.float().std(), xs.float().std()) or \
            abs(torch.corrcoef(torch.stack([ys.float(), xs.float()]))[0, 1]) > 0.3  # elongated: no circle, square or upright triangle


def test_projectors_refit_on_cached_states_and_move_to_a_new_decoder(tiny_backbone_config, toy_data, tmp_path):
    """`anygpt train projectors`: the LLM runs once (states cached in the run folder), a projector whose
    decoder takes another shape is rebuilt for it, and the saved model loads with the new decoder."""
    from anygpt.train.realign import realign_projectors
    from decoders import ImageDecoder

    AnyGPT.from_config(tiny_backbone_config).save_pretrained(tmp_path / "init")
    ImageDecoder.tiny(seed=1).save_pretrained(tmp_path / "clip-image")  # 77x32, where the config says 16x384
    report = realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run",
                                decoders={"image": str(tmp_path / "clip-image")}, steps=4, batch_size=4,
                                heldout_fraction=0.3, manifest=toy_data / "manifest.jsonl", per_modality=2)
    assert report["rebuilt"] == ["image"] and "image" in report["modalities"]
    dialogs = read_dialogs(toy_data / "dialogs.jsonl")  # + 2 requests per output modality of the manifest
    made = sum(1 for d in dialogs for t in d["turns"] if t.get("outputs"))
    assert report["samples"] == made + 2 * 3
    assert (tmp_path / "run" / "states-image.safetensors").is_file()
    for figures in report["modalities"].values():
        assert 0 <= figures["heldout_after"]["top1"] <= 1 and figures["final"]["step"] == 4
    app = AnyGPT.from_pretrained(tmp_path / "run" / "model")
    projector = app.model.output_projectors["image"]
    assert (projector.tokens, projector.out_dim) == (77, 32) and app.decoder("image").conditioning.shape == (77, 32)
    again = realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run",
                               decoders={"image": str(tmp_path / "clip-image")}, steps=2, batch_size=4,
                               heldout_fraction=0.3)  # a re-run reads the cached states
    assert again["modalities"].keys() == report["modalities"].keys()


def test_projectors_refit_from_a_fresh_start(tiny_backbone_config, toy_data, tmp_path):
    """`--fresh` starts the fitted projector from the seed alone, not from the init's weights."""
    from anygpt.train.realign import realign_projectors, rebuild_projector

    AnyGPT.from_config(tiny_backbone_config).save_pretrained(tmp_path / "init")
    init = AnyGPT.from_pretrained(tmp_path / "init").model.output_projectors["video"].state_dict()
    report = realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run", modalities=("video",),
                                steps=1, lr=0.0, batch_size=4, heldout_fraction=0.3, fresh=True, seed=7)
    assert report["rebuilt"] == ["video"]
    fitted = AnyGPT.from_pretrained(tmp_path / "run" / "model").model.output_projectors["video"].state_dict()
    assert any(not torch.equal(init[k], fitted[k]) for k in init)  # not the init's weights ...
    app = AnyGPT.from_config(tiny_backbone_config)
    rebuild_projector(app, "video", 7)
    expected = app.model.output_projectors["video"].state_dict()
    assert all(torch.equal(expected[k], fitted[k]) for k in expected)  # ... but the seed's (lr 0)


def test_projectors_refit_pools_the_sound_conditioning_as_the_decoder_does(tiny_backbone_config, toy_data, tmp_path):
    """`--pooled-tokens 16`: the audio projector (the tiny decoder takes MiniLM's one sentence vector)
    is rebuilt to write 16 token states, fitted to the decoder's own (zero at padding, `token_states`,
    whose normalised sum is `encode_text`); the model saves and loads with it and hands the decoder
    unit vectors. A decoder of token states is refused. `novel_audio` and `echo_audio` requests join
    the fit, their states cached apart."""
    import torch.nn.functional as F

    from anygpt.pipeline import ChatRequest
    from anygpt.train.alignment import ProjectorCache
    from anygpt.train.realign import realign_projectors

    AnyGPT.from_config(tiny_backbone_config).save_pretrained(tmp_path / "init")
    report = realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run", modalities=("audio",),
                                steps=3, batch_size=4, heldout_fraction=0.0, pooled_tokens=16, novel_audio=5,
                                echo_audio=3)
    assert report["rebuilt"] == ["audio"] and report["pooled_tokens"] == {"audio": 16}
    world = ProjectorCache.load(tmp_path / "run" / "states-audio.safetensors")
    extra = ProjectorCache.load(tmp_path / "run" / "states-audio-extra-5-3.safetensors")
    assert len(extra) == 8 and report["modalities"]["audio"]["runs"] == len(world) + 8
    app = AnyGPT.from_pretrained(tmp_path / "run" / "model")
    projector = app.model.output_projectors["audio"]
    assert (projector.tokens, projector.out_dim, projector.pool_from) == (1, 384, 16)
    assert app.model.output_projectors["image"].pool_from == 0
    (runs,) = app.conditioning_batch([ChatRequest("play a low tone", options={"force": ("audio",), "outputs": ("audio",),
                                                                             "max_new_tokens": 8})])
    assert runs[0][0] == "audio" and runs[0][1].shape == (1, 384)
    assert torch.allclose(runs[0][1].float().norm(), torch.tensor(1.0), atol=1e-4)
    decoder = app.decoder("audio")
    captions = ["a long rising sweep", "a short noise burst"]
    states = decoder.token_states(captions, 16)
    assert states.shape == (2, 16, 384) and not states[:, -1].any()  # padding is zero
    assert torch.allclose(F.normalize(states.sum(1), dim=-1), decoder.encode_text(captions)[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="pooled"):
        realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run2", modalities=("image",),
                           steps=1, batch_size=4, heldout_fraction=0.0, pooled_tokens=16)


def test_projectors_refit_on_every_caption(tiny_backbone_config, toy_data, tmp_path):
    """`--heldout-fraction 0` fits on every cached run and measures nothing on the cache (the shipped fits
    are judged by `anygpt eval`); a share of 1 would leave nothing to fit and is refused up front."""
    from anygpt.train.alignment import ProjectorCache
    from anygpt.train.realign import realign_projectors, split_by_caption

    AnyGPT.from_config(tiny_backbone_config).save_pretrained(tmp_path / "init")
    report = realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run", modalities=("video",),
                                steps=2, batch_size=4, heldout_fraction=0.0, fresh=True)
    figures = report["modalities"]["video"]
    assert figures["heldout_before"] is None and figures["heldout_after"] is None and figures["final"]["step"] == 2
    cache = ProjectorCache.load(tmp_path / "run" / "states-video.safetensors")
    train_rows, heldout_rows = split_by_caption(cache, 0.0, seed=0)
    assert torch.equal(train_rows, torch.arange(len(cache))) and len(heldout_rows) == 0
    assert len(split_by_caption(cache, 0.3, seed=0)[1]) > 0
    with pytest.raises(ValueError, match="heldout_fraction"):
        realign_projectors(tmp_path / "init", toy_data / "dialogs.jsonl", tmp_path / "run", heldout_fraction=1.0)


def test_a_rebuilt_projector_starts_from_the_seed_alone(tiny_backbone_config, tmp_path):
    """The fitted projector's quality depends on its start, so the start must follow the run's seed,
    not the random draws that loading happened to make before it."""
    from anygpt.train.realign import use_decoder
    from decoders import ImageDecoder

    ImageDecoder.tiny(seed=1).save_pretrained(tmp_path / "clip-image")  # 77x32: the projector is rebuilt

    def rebuilt(seed: int, draws: int) -> dict:
        app = AnyGPT.from_config(tiny_backbone_config)
        torch.rand(draws)  # whatever ran before
        assert use_decoder(app, "image", str(tmp_path / "clip-image"), seed)
        return app.model.output_projectors["image"].state_dict()

    first, second, other = rebuilt(3, 1), rebuilt(3, 1000), rebuilt(4, 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_stage1_on_dialogs_trains_the_input_projector_alone_on_questions_about_media(
        tiny_backbone_config, toy_data, tmp_path):
    """After stage 3: the dialogs that attach media teach the input projector to read them; the LoRA,
    the signal rows and the output projectors (what text-only requests use) stay as they were."""
    from anygpt.data.dialogs import is_dialogs

    dialogs = toy_data / "dialogs.jsonl"
    assert is_dialogs(dialogs) and not is_dialogs(toy_data / "manifest.jsonl")
    kwargs = dict(steps=3, batch_size=2, lr=3e-3, seed=0)
    train_stage(3, dialogs, tmp_path / "s3", config=tiny_backbone_config, **kwargs)
    summary = train_stage(1, dialogs, tmp_path / "s1", init=tmp_path / "s3" / "model", **kwargs)
    with_media = [d for d in read_dialogs(dialogs) if d["turns"][0].get("media")]
    assert summary["steps"] == 3 and with_media
    before = load_file(tmp_path / "s3" / "model" / "anygpt.safetensors")
    after = load_file(tmp_path / "s1" / "model" / "anygpt.safetensors")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("input_projector.") for k in moved), moved
    lora = "lora/adapter_model.safetensors"
    assert all(torch.equal(v, load_file(tmp_path / "s1" / "model" / lora)[k])
               for k, v in load_file(tmp_path / "s3" / "model" / lora).items())

    # --lora: the LoRA trains beside the input projector; the signal rows and output projectors do not
    train_stage(1, dialogs, tmp_path / "s1l", init=tmp_path / "s3" / "model", lora=True, **kwargs)
    after = load_file(tmp_path / "s1l" / "model" / "anygpt.safetensors")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("input_projector.") for k in moved), moved
    old, new = (load_file(tmp_path / run / "model" / lora) for run in ("s3", "s1l"))
    assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    with pytest.raises(ValueError, match="no LoRA"):
        train_stage(1, dialogs, tmp_path / "x", config=tiny_backbone_config, lora=True, **kwargs)
    with pytest.raises(ValueError, match="stage-1 option"):
        train_stage(3, dialogs, tmp_path / "x", init=tmp_path / "s3" / "model", lora=True, **kwargs)


def test_stage1_extra_samples_read_length_and_direction_apart_from_kind_and_colour(tmp_path):
    """Novel sounds come at both lengths and say it; grey clips have no colour and say their direction.
    The files open as the media they claim, and a second call reuses them."""
    from anygpt.data import toyworld as tw
    from anygpt.eval import probes
    from anygpt.train.stages import grey_clip_samples, novel_sound_samples

    sounds = novel_sound_samples(24, tmp_path / "sounds", seed=0)
    answers = [s.turns[1].text for s in sounds]
    assert {a.split()[1] for a in answers} == {"short", "long"}
    assert {a.split(" ", 2)[2].rstrip(".") for a in answers} <= set(tw.NOVEL_SOUNDS)
    for s in sounds[:4]:
        (modality, path), = s.turns[0].media
        wave, rate = tw.load_audio(path)
        length = s.turns[1].text.split()[1]
        assert modality == "audio" and tw.LENGTHS[length][0] - 0.05 <= len(wave) / rate <= tw.LENGTHS[length][1] + 0.05
    clips = grey_clip_samples(12, tmp_path / "clips", seed=0)
    for c in clips[:4]:
        (modality, path), = c.turns[0].media
        frames = tw.load_video(path).astype(int)
        assert modality == "video" and frames.shape[0] == 8
        assert np.abs(frames - frames.mean(-1, keepdims=True)).max() <= 12  # grey, up to H.264's chroma
        assert probes.probe_video(frames)["direction"] in c.turns[1].text
    assert {c.turns[1].text.split()[-1].rstrip(".") for c in clips} <= set(tw.DIRECTIONS)
    stamp = (tmp_path / "clips" / "00000.mp4").stat().st_mtime_ns
    grey_clip_samples(12, tmp_path / "clips", seed=0)
    assert (tmp_path / "clips" / "00000.mp4").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="stages 1 and 3"):
        train_stage(2, tmp_path / "none.jsonl", tmp_path / "run", init=tmp_path, grey_clips=2)


def test_painted_clips_have_a_colour_the_world_lacks_and_are_answered_with_it_and_their_direction(tmp_path):
    from anygpt.eval import probes
    from anygpt.train.stages import PAINT_COLOURS, paint_clip_samples, train_stage

    assert not set(PAINT_COLOURS) & set(toyworld.COLORS)
    clips = paint_clip_samples(12, tmp_path / "clips", seed=0)
    described = [c for c in clips if c.turns[1].text.startswith("A ")]
    assert 0 < len(described) < len(clips)
    for c in clips[:6]:
        (modality, path), = c.turns[0].media
        frames = toyworld.load_video(path)
        direction = probes.probe_video(frames)["direction"]
        assert modality == "video" and frames.shape[0] == 8 and direction in c.turns[1].text
        # the shape's pixels are the painted colour: the median of those far from the plain background
        rgb = frames[0].reshape(-1, 3).astype(int)
        shape = np.median(rgb[np.abs(rgb - np.median(rgb, 0)).max(1) > 60], 0)
        colours = [c2 for c2 in PAINT_COLOURS if c2 in c.turns[1].text]
        if colours:
            assert np.abs(shape - PAINT_COLOURS[colours[0]]).max() < 40
    for c in described:
        colour, shape, _, direction = c.turns[1].text.rstrip(".").split()[1:]
        assert colour in PAINT_COLOURS and shape in toyworld.SHAPES and direction in toyworld.DIRECTIONS
    with pytest.raises(ValueError, match="stages 1 and 3"):
        train_stage(2, tmp_path / "none.jsonl", tmp_path / "run", init=tmp_path, paint_clips=2)


def test_captions_stand_in_for_sounds_and_clips_and_teach_only_length_and_direction(
        tiny, tiny_backbone_config, toy_data, tmp_path):
    """A caption in place of a sound or clip is read by the encoder's text branch through the same input
    projector; its answer learns the length or direction, not the kind or colour it names, and no
    caption names a world kind or colour (so none is a held-out pair)."""
    from anygpt.model import CaptionStandIn
    from anygpt.train.stages import caption_samples
    from anygpt.data.toyworld import CAPTION_COLOURS, CAPTION_SOUNDS

    assert not {w for k in CAPTION_SOUNDS for w in k.split()} & {w for k in toyworld.AUDIO_KINDS for w in k.split()}
    assert not set(CAPTION_COLOURS) & set(toyworld.COLORS)
    tok = tiny.model.tokenizer
    sounds, clips = caption_samples("audio", 40, seed=0), caption_samples("video", 40, seed=0)
    lengths, directions = set(), set()
    for s in sounds + clips:
        (modality, item), = s.turns[0].media
        assert isinstance(item, CaptionStandIn)
        ids, labels = tokenize_sample(tiny.model, s)
        learnt = tok.decode([t for t in labels.tolist() if t != -100])
        named = s.turns[1].unlearnt[0]
        assert named in item.text and named not in learnt
        if modality == "audio":
            length, = [w for w in toyworld.LENGTHS if w in item.text]
            assert length in learnt
            lengths.add(length)
        else:
            direction, = [w for w in toyworld.DIRECTIONS if item.text.endswith(w)]
            assert learnt.rstrip().removesuffix("<|im_end|>").rstrip(".").endswith(direction)
            directions.add(direction)
    assert lengths == set(toyworld.LENGTHS) and directions == set(toyworld.DIRECTIONS)
    assert all(s.turns[1].unlearnt[0] in s.turns[1].text for s in sounds)
    assert any(c.turns[1].unlearnt[0] in c.turns[1].text for c in clips)  # the described ones
    # the encoder's text embedding through the input projector, next to an image's own embedding
    image = toy_data / "images" / sorted(p.name for p in (toy_data / "images").iterdir())[0]
    media = [("image", str(image)), ("audio", CaptionStandIn("a short whistle"))]
    got = tiny.model.encode_media(media)
    proj = tiny.model.input_projector
    with torch.no_grad():
        assert torch.allclose(got[1], proj(tiny.model.encoder.encode_text(["a short whistle"]))[0].float(), atol=1e-5)
        assert torch.allclose(got[0], proj(tiny.model.encoder.encode("image", [str(image)]))[0].float(), atol=1e-5)
    with pytest.raises(ValueError, match="sounds .audio. or clips"):
        caption_samples("image", 2, seed=0)
    # stage 3 takes them, and the world sounds' lengths unlearnt
    summary = train_stage(3, toy_data / "dialogs.jsonl", tmp_path / "s3", config=tiny_backbone_config, steps=2,
                          batch_size=2, seed=0, caption_sounds=3, caption_clips=3, length_from_novel=True)
    assert summary["steps"] == 2 and (tmp_path / "s3" / "model" / "anygpt.safetensors").exists()
    # --fresh-lora: the LoRA starts anew (peft's B is zero), the projectors carry over
    # (and from here on each sound is read with its tail, each clip with its grey copy: kept in its config)
    train_stage(3, toy_data / "dialogs.jsonl", tmp_path / "s3f", init=tmp_path / "s3" / "model", steps=1,
                batch_size=2, lr=1e-12, seed=0, fresh_lora=True, audio_windows="0:0.9", video_grey=True,
                video_still=True, even_lengths=True, novel_audio=2, novel_kinds_unlearnt=True,
                audio_loudness="1.5:", stretched_sounds=2)
    saved = AnyGPTConfig.load(tmp_path / "s3f" / "model" / "config.json")
    assert saved.audio_windows == [(0.0, 0.9)] and saved.audio_loudness_windows == [(1.5, None)]
    assert saved.video_grey and saved.video_still
    assert len(list((tmp_path / "s3f" / "stretched-sounds").glob("*.wav"))) == 2
    for two in ({"even_lengths": True, "length_from_novel": True}, {"any_lengths": True, "even_lengths": True}):
        with pytest.raises(ValueError, match="each replace the others"):
            train_stage(3, toy_data / "dialogs.jsonl", tmp_path / "x", init=tmp_path / "s3" / "model", **two)
    lora = "lora/adapter_model.safetensors"
    old, new = (load_file(tmp_path / run / "model" / lora) for run in ("s3", "s3f"))
    b = [k for k in old if "lora_B" in k]
    assert b and max(old[k].abs().max() for k in b) > 1e-4 and max(new[k].abs().max() for k in b) < 1e-6
    before, after = (load_file(tmp_path / run / "model" / "anygpt.safetensors") for run in ("s3", "s3f"))
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before)
    with pytest.raises(ValueError, match="stage-3 option"):
        train_stage(1, toy_data / "dialogs.jsonl", tmp_path / "x", init=tmp_path / "s3" / "model", fresh_lora=True)


def test_requests_for_novel_sounds_name_kind_and_length_in_request_reply_and_target():
    from anygpt.data.dialogs import novel_sound_requests

    dialogs = novel_sound_requests(40, seed=0)
    lengths = set()
    for d in dialogs:
        (output,) = d["turns"][1]["outputs"]
        kind = next(k for k in toyworld.NOVEL_SOUNDS if k in output["caption"])
        length = next(k for k, words in toyworld.PHRASES["length"].items() if any(w in output["caption"] for w in words))
        assert output["modality"] == "audio" and output["caption"] in d["turns"][0]["text"]
        assert f"{length} {kind}" in d["turns"][1]["text"]
        lengths.add(length)
    assert lengths == {"short", "long"}


def test_echo_requests_reply_with_the_request_words_for_a_training_pair():
    from anygpt.data.dialogs import echo_sound_requests

    dialogs = echo_sound_requests(60, seed=0)
    phrases = set()
    for d in dialogs:
        (output,) = d["turns"][1]["outputs"]
        caption = output["caption"]
        kind = next(k for k, words in toyworld.PHRASES["kind"].items() if any(caption.endswith(w) for w in words))
        length = caption.split()[1]
        assert (kind, length) not in toyworld.HELDOUT["audio"]
        assert caption in d["turns"][0]["text"] and caption in d["turns"][1]["text"]
        phrases.add(caption.split(" ", 2)[2])
    assert len(phrases) > 16  # more than one phrase per kind


def test_cut_sounds_are_shorter_than_either_length_and_answered_with_their_kind(tmp_path):
    """No cut sound may be a held-out kind-length pair: each lasts less than the short class's least."""
    from anygpt.eval import probes
    from anygpt.train.stages import CUT_SECONDS, cut_sound_samples

    samples = cut_sound_samples(8, tmp_path / "cut", seed=0)
    assert CUT_SECONDS[1] < toyworld.LENGTHS["short"][0]
    for s in samples:
        (modality, path), = s.turns[0].media
        wave, rate = toyworld.load_audio(path)
        assert modality == "audio" and CUT_SECONDS[0] - 0.01 <= len(wave) / rate <= CUT_SECONDS[1] + 0.01
        assert not {"short", "long", "brief", "lengthy"} & set(s.turns[1].text.rstrip(".").split())
        assert probes.probe_audio(wave, rate)["length"] != "long"
    assert len({next(k for k in toyworld.AUDIO_KINDS if k in s.turns[1].text) for s in samples}) > 2
    # say_length: the same sounds, answered with the length their kind has in the training split (so no
    # answer names a held-out pair), that word not learnt
    from anygpt.eval.benchmark import _labels_in

    told = cut_sound_samples(8, tmp_path / "cut", seed=0, say_length=True)
    for s, t in zip(samples, told):
        assert s.turns[0].media == t.turns[0].media and t.turns[1].unlearnt == tuple(toyworld.LENGTHS)
        labels = _labels_in(t.turns[1].text, "audio")
        assert labels["kind"] in s.turns[1].text and (labels["kind"], labels["length"]) not in toyworld.HELDOUT["audio"]


def test_stretched_sounds_are_longer_than_either_length_and_no_range_may_overlap_one(tmp_path):
    """Stretched sounds (`STRETCH_SECONDS`) last more than the long class's most, so none is a held-out
    pair; a range that overlaps a length class is refused."""
    from anygpt.eval import probes
    from anygpt.train.stages import CUT_SECONDS, STRETCH_SECONDS, cut_sound_samples

    assert STRETCH_SECONDS[0] > toyworld.LENGTHS["long"][1]
    samples = cut_sound_samples(8, tmp_path / "stretched", seed=0, seconds=STRETCH_SECONDS)
    for s in samples:
        (modality, path), = s.turns[0].media
        wave, rate = toyworld.load_audio(path)
        assert modality == "audio" and STRETCH_SECONDS[0] - 0.01 <= len(wave) / rate <= STRETCH_SECONDS[1] + 0.01
        assert probes.probe_audio(wave, rate)["length"] == "long"
    kinds = [next(k for k in toyworld.AUDIO_KINDS if k in s.turns[1].text) for s in samples]
    assert len(set(kinds)) > 2
    cut = cut_sound_samples(8, tmp_path / "cut", seed=0, seconds=CUT_SECONDS)  # its own draws
    assert kinds != [next(k for k in toyworld.AUDIO_KINDS if k in s.turns[1].text) for s in cut]
    for overlapping in ((1.3, 1.5), (1.9, 2.2), (0.5, 3.0)):
        with pytest.raises(ValueError, match="overlap a length class"):
            cut_sound_samples(1, tmp_path / "bad", seed=0, seconds=overlapping)


def test_a_hedged_length_word_is_learnt_as_a_soft_target(tiny, toy_data):
    """`hedge_length_words`: the length word's loss is 0.9 of its own cross-entropy and 0.1 of the other
    length's, at its one token; every other token's loss is as before; a picture's answer is left whole.
    `even_length_words`: the same at 0.5 / 0.5; `any_length_words`: the loss of either word."""
    import torch.nn.functional as F

    from anygpt.model import EITHER, HEDGE, Turn
    from anygpt.train.stages import Sample, any_length_words, even_length_words, hedge_length_words

    wav = next((toy_data / "audio").iterdir())
    sound = Sample([Turn("user", "describe this sound.", [("audio", str(wav))]),
                    Turn("assistant", "A long rising sweep.")])
    hedged = hedge_length_words(sound)
    ids, labels, others, weights = tiny.model.tokenize_hedged(hedged.turns)
    tok = tiny.model.tokenizer
    assert [(tok.decode([i]).strip(), tok.decode([o]).strip()) for i, o in zip(ids, others) if o != -100] == [
        ("long", "short")]
    assert tiny.model.tokenize_conversation(hedged.turns) == tiny.model.tokenize_conversation(sound.turns)
    with torch.no_grad():
        plain, soft = tiny.model([sound.turns]), tiny.model([hedged.turns])
        batch = tiny.model.prepare_inputs_labels([sound.turns])
        logits = tiny.model.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits[0]
    at = others.index(next(o for o in others if o != -100)) - 1  # the logits that predict the length word
    own, other = (F.cross_entropy(logits[at:at + 1].float(), torch.tensor([t])) for t in (ids[at + 1], others[at + 1]))
    expected = plain.loss_sum - own + (1 - HEDGE) * own + HEDGE * other
    assert soft.label_count == plain.label_count and torch.allclose(soft.loss_sum, expected, atol=1e-4)
    picture = Sample([Turn("user", "what is drawn here?", [("image", "x.png")]), Turn("assistant", "A long bar.")])
    assert hedge_length_words(picture) is picture
    # `even_length_words`: half and half, at the same token
    even = even_length_words(sound)
    _, _, others2, weights2 = tiny.model.tokenize_hedged(even.turns)
    assert others2 == others and [w for w in weights2 if w] == [0.5] and [w for w in weights if w] == [HEDGE]
    with torch.no_grad():
        half = tiny.model([even.turns])
    assert torch.allclose(half.loss_sum, plain.loss_sum - own + 0.5 * own + 0.5 * other, atol=1e-4)
    assert even_length_words(picture) is picture
    # `any_length_words`: either word, -log(p(long) + p(short)), less than either word's own loss
    either = any_length_words(sound)
    _, _, others3, weights3 = tiny.model.tokenize_hedged(either.turns)
    assert others3 == others and [w for w in weights3 if w] == [EITHER]
    with torch.no_grad():
        any_one = tiny.model([either.turns])
    summed = -torch.log(torch.exp(-own) + torch.exp(-other))
    assert summed < min(own, other)
    assert torch.allclose(any_one.loss_sum, plain.loss_sum - own + summed, atol=1e-4)
    assert any_length_words(picture) is picture
