"""The toy-world generator: determinism, captions that match content, the held-out split, manifests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
import pytest
import soundfile as sf
from PIL import Image

from anygpt.data import toyworld as tw
from anygpt.data.manifest import ManifestError, read_manifest
from anygpt.errors import InputError
from anygpt.eval.probes import probe_text


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _specs(modality: str, split: str, n: int, seed: int = 0):
    """n (spec, caption) pairs, drawn as make_dataset draws them."""
    out = []
    for i in range(n):
        rng = tw.example_rng(seed, split, modality, i)
        spec = tw.sample(modality, rng, split)
        out.append((spec, tw.caption(spec, rng, split)))
    return out


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_files(tmp_path):
    a = tw.make_dataset(tmp_path / "a", n_per_modality=3, seed=5)
    b = tw.make_dataset(tmp_path / "b", n_per_modality=3, seed=5)
    files_a, files_b = _files(a.parent), _files(b.parent)
    assert len(files_a) == 4 * 3 + 2
    assert files_a == files_b


def test_different_seed_or_split_gives_different_data(tmp_path):
    a = tw.make_dataset(tmp_path / "a", n_per_modality=3, seed=5)
    b = tw.make_dataset(tmp_path / "b", n_per_modality=3, seed=6)
    c = tw.make_dataset(tmp_path / "c", n_per_modality=3, seed=5, split="heldout")
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    for modality_file in ("images/000000.png", "audio/000000.wav", "video/000000.mp4", "depth/000000.png"):
        assert fa[modality_file] != fb[modality_file] and fa[modality_file] != fc[modality_file]


def test_render_is_a_pure_function_of_the_spec():
    for modality in tw.MODALITIES:
        spec = tw.sample(modality, np.random.default_rng(1))
        assert spec == tw.sample(modality, np.random.default_rng(1))
        np.testing.assert_array_equal(tw.render(spec), tw.render(spec))


def test_a_bigger_dataset_extends_a_smaller_one(tmp_path):
    small = read_manifest(tw.make_dataset(tmp_path / "s", n_per_modality={"image": 2, "audio": 2}, seed=3))
    big = read_manifest(tw.make_dataset(tmp_path / "b", n_per_modality={"image": 4, "audio": 3}, seed=3))
    strip = lambda r: {k: v for k, v in r.items() if k != "path"}
    by_id = {r["id"]: strip(r) for r in big}
    assert all(by_id[r["id"]] == strip(r) for r in small)


# ---------------------------------------------------------------- files and manifest
def test_manifest_and_files(tmp_path):
    manifest = tw.make_dataset(tmp_path / "d", n_per_modality={"image": 2, "audio": 2, "video": 2, "depth": 2}, seed=9)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["id"] for line in lines[:2]] == ["image-000000", "image-000001"]
    for line in lines:
        assert set(line) == {"id", "modality", "path", "caption", "attributes", "split", "seed"}
        assert not Path(line["path"]).is_absolute() and (manifest.parent / line["path"]).is_file()
        assert line["split"] == "train" and line["seed"] == 9
        for key in tw.LABELS[line["modality"]]:
            assert key in line["attributes"]
    info = json.loads((manifest.parent / "dataset.json").read_text())
    assert info["version"] == tw.GENERATOR_VERSION and info["seed"] == 9 and info["split"] == "train"
    assert info["counts"] == {"image": 2, "audio": 2, "video": 2, "depth": 2}

    records = {r["modality"]: r for r in read_manifest(manifest, check_files=True)}
    # each file holds what the spec in its attributes renders (video: up to H.264 loss)
    rebuild = lambda r: tw.render(tw.spec_from_attributes(r["modality"], r["attributes"]))
    image = records["image"]
    np.testing.assert_array_equal(tw.load_image(image["path"]), rebuild(image))
    wave, sr = tw.load_audio(records["audio"]["path"])
    assert sr == 16000 and sf.info(records["audio"]["path"]).subtype == "PCM_16"
    np.testing.assert_allclose(wave, rebuild(records["audio"]), atol=1 / 32000)
    depth = tw.load_depth(records["depth"]["path"])
    assert Image.open(records["depth"]["path"]).mode.startswith("I")  # 16-bit
    np.testing.assert_array_equal(depth, rebuild(records["depth"]))
    # the encoder reads the PNG as the disparity that was rendered (it takes a PNG's values as they are)
    from encoders import ImageBindEncoder
    encoder = ImageBindEncoder.tiny()
    assert torch.equal(encoder.prepare("depth", [records["depth"]["path"]]), encoder.prepare("depth", [rebuild(records["depth"])]))
    with av.open(records["video"]["path"]) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    frames = tw.load_video(records["video"]["path"])
    expected = rebuild(records["video"])
    assert frames.shape == expected.shape == (8, 64, 64, 3)
    assert np.abs(frames.astype(int) - expected).mean() < 4  # lossy, but close


def test_make_dataset_options_and_refusals(tmp_path):
    m = tw.make_dataset(tmp_path / "d", n_per_modality={"video": 1, "image": 1}, seed=0, image_size=32, video_frames=12)
    records = read_manifest(m)
    assert [r["modality"] for r in records] == ["image", "video"]
    assert tw.load_image(records[0]["path"]).shape == (32, 32, 3)
    assert tw.load_video(records[1]["path"]).shape == (12, 32, 32, 3)
    with pytest.raises(FileExistsError):
        tw.make_dataset(tmp_path / "d", n_per_modality=1, seed=0)
    tw.make_dataset(tmp_path / "d", n_per_modality={"image": 3}, seed=0, overwrite=True)
    tw.make_dataset(tmp_path / "d", n_per_modality={"image": 1}, seed=0, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "d").rglob("*.*")) == ["000000.png", "dataset.json", "manifest.jsonl"]
    with pytest.raises(ValueError, match="unknown modalities"):
        tw.make_dataset(tmp_path / "e", n_per_modality={"smell": 1}, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        tw.make_dataset(tmp_path / "e", n_per_modality=1, seed=0, split="test")


def test_toyworld_main(tmp_path, capsys):
    manifest = tw.toyworld_main(tmp_path / "w", n=2, seed=1, split="heldout")
    assert len(read_manifest(manifest)) == 8 and "heldout" in capsys.readouterr().out


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"modality": "image", "path": "a.png"}', "'caption' must be a non-empty string"),
    ('{"modality": "image", "path": "", "caption": "x"}', "'path' must be a non-empty string"),
    ('{"modality": "smell", "path": "a.png", "caption": "x"}', "unknown modality 'smell'"),
    ('{"modality": "image", "path": "a.png", "caption": "x", "attributes": [1]}', "'attributes' must be an object"),
    ('{"id": "a", "modality": "image", "path": "a.png", "caption": "x"}', "id 'a' already used on line 1"),
])
def test_read_manifest_names_the_bad_line(tmp_path, line, message):
    good = '{"id": "a", "modality": "image", "path": "a.png", "caption": "a red circle"}'
    path = tmp_path / "manifest.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ManifestError, match=rf"line 3: .*{re.escape(message)}") as info:
        read_manifest(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)


def test_read_manifest_resolves_paths_and_checks_files(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"modality": "audio", "path": "clips/a.wav", "caption": "a hum"}\n')
    (record,) = read_manifest(path)  # a plain real-data line: no id, no attributes
    assert record["path"] == str((tmp_path / "clips/a.wav").resolve())
    with pytest.raises(ManifestError, match="line 1: file .* does not exist"):
        read_manifest(path, check_files=True)
    path.write_text("\n")
    with pytest.raises(ManifestError, match="no examples"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- captions and splits
@pytest.mark.parametrize("split", tw.SPLITS)
@pytest.mark.parametrize("modality", tw.MODALITIES)
def test_caption_names_the_attributes(modality, split):
    for spec, text in _specs(modality, split, 150):
        named = probe_text(text, modality)
        for key, value in spec.labels().items():
            if key == "length":  # audio captions mention the length only sometimes
                assert named[key] in (None, value), text
            else:
                assert named[key] == value, text


def _template_pattern(template: str, modality: str) -> re.Pattern:
    """A regex matching exactly the captions a template can produce."""
    values = {**{k: v for k, v in tw.VALUES[modality].items()},
              **{k: [p for ps in tw.PHRASES[k].values() for p in ps] for k in tw.PHRASES}}
    pattern = re.escape(template)
    pattern = re.sub(r"\\{(\w+)\\}", lambda m: "(?:" + "|".join(map(re.escape, values[m.group(1)])) + ")", pattern)
    return re.compile("^" + re.sub(r"\b([Aa])\\ ", r"\1n?\\ ", pattern) + "$")


@pytest.mark.parametrize("modality", tw.MODALITIES)
def test_heldout_wording_never_occurs_in_train(modality):
    templates = tw.CAPTION_TEMPLATES[modality]
    assert not set(templates["train"]) & set(templates["heldout"])
    assert len(templates["train"]) >= 6 and len(templates["heldout"]) >= 3
    patterns = {s: [_template_pattern(t, modality) for t in templates[s]] for s in tw.SPLITS}
    for split, other in (("train", "heldout"), ("heldout", "train")):
        captions = [text for _, text in _specs(modality, split, 200)]
        assert all(any(p.match(c) for p in patterns[split]) for c in captions)
        assert not any(p.match(c) for p in patterns[other] for c in captions)
        assert {t for c in captions for t, p in zip(templates[split], patterns[split]) if p.match(c)} == set(templates[split])  # every wording occurs


@pytest.mark.parametrize("modality", tw.MODALITIES)
def test_heldout_combinations_never_occur_in_train(modality):
    a, b = tw.HELDOUT_KEYS[modality]
    seen = {split: {(s.labels()[a], s.labels()[b]) for s, _ in _specs(modality, split, 300)} for split in tw.SPLITS}
    assert seen["heldout"] == set(tw.HELDOUT[modality])
    assert not seen["train"] & tw.HELDOUT[modality]
    # every single value still occurs in train: only the pairings are new
    values = tw.VALUES[modality]
    assert {x for x, _ in seen["train"]} == set(values[a]) and {y for _, y in seen["train"]} == set(values[b])


def test_novel_sounds_come_in_both_lengths_and_are_several_lines_at_once():
    """Sounds the world does not have (for the encoder's length): each kind at both lengths, rendered as
    long as its length says, and never one steady line (what every world tone is)."""
    from anygpt.eval.probes import probe_audio

    rng = np.random.default_rng(0)
    specs = [tw.sample_novel_audio(rng) for _ in range(60)]
    assert {(s.kind, s.length) for s in specs} == {(k, n) for k in tw.NOVEL_SOUNDS for n in tw.LENGTHS}
    assert not {s.kind for s in specs} & set(tw.AUDIO_KINDS)
    for spec in specs[:12]:
        x = tw.render(spec)
        assert len(x) == round(spec.duration * tw.SAMPLE_RATE) and 0 < np.abs(x).max() <= 1
        assert probe_audio(x, tw.SAMPLE_RATE)["length"] == spec.length
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / tw.SAMPLE_RATE)
        for ratio in tw.NOVEL_PARTIALS[spec.kind]:  # every partial holds a share of the energy
            near = np.abs(freqs - spec.f0 * ratio) < 5
            assert power[near].sum() > 0.2 * power.sum()


def test_sample_with_fixed_attributes():
    rng = np.random.default_rng(0)
    spec = tw.sample_image(rng, shape="square", color="red")
    assert (spec.shape, spec.color) == ("square", "red")
    assert tw.sample_video(rng, "heldout", color="red").direction == "up"
    with pytest.raises(ValueError, match="no image in split 'train'"):
        tw.sample_image(rng, "train", color="red", shape="triangle")
    with pytest.raises(ValueError, match="unknown image color 'teal'"):
        tw.sample_image(rng, color="teal")


def test_world_is_as_specified():
    assert len(tw.SHAPES) >= 3 and len(tw.COLORS) >= 6 and len(tw.AUDIO_KINDS) >= 8
    for modality in ("audio",):
        for spec, _ in _specs(modality, "train", 50):
            wave = tw.render(spec)
            assert wave.dtype == np.float32 and 1.0 <= len(wave) / 16000 <= 2.0 and np.abs(wave).max() <= 1.0
    for spec, _ in _specs("video", "train", 20):
        frames = tw.render(spec)
        assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    depth = tw.render(tw.sample_depth(np.random.default_rng(0)))
    assert depth.dtype == np.float32 and depth.min() == 0 and depth.max() <= tw.DISPARITY["near"][1]
    assert np.array_equal(depth, np.round(depth))  # whole units, as the 16-bit PNG holds them


def test_generator_and_probes_import_no_model_code():
    code = ("import sys, anygpt.data.toyworld, anygpt.data.dialogs, anygpt.eval.probes; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'diffusers', 'encoders', "
            "'decoders', 'imagebind') or m in ('anygpt.model', 'anygpt.pipeline', 'anygpt.llm')]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_training_dialogs_never_ask_for_a_held_out_pair(tmp_path):
    """A training "describe this picture, then draw its shape in blue" once asked for held-out pairs
    (a blue square) in 127 of 457 such requests: the eval's held-out requests leaked into training."""
    from anygpt.data.dialogs import make_dialogs, read_dialogs
    from anygpt.eval.benchmark import _labels_in

    manifest = tw.make_dataset(tmp_path, n_per_modality={"image": 12, "video": 12}, seed=0)
    dialogs = read_dialogs(make_dialogs(manifest, 120, seed=0, mix={"mix": 1.0}))
    asked = [(o["modality"], _labels_in(o["caption"], o["modality"])) for d in dialogs for t in d["turns"]
             for o in t.get("outputs", [])]
    assert len(asked) == 120 and {m for m, _ in asked} == {"image"}
    pairs = {(labels["color"], labels["shape"]) for _, labels in asked}
    assert not pairs & tw.HELDOUT["image"], pairs & tw.HELDOUT["image"]
    assert len(pairs) >= 8  # still many colours and shapes


def test_dialogs_say_a_sounds_length_and_never_ask_for_a_held_out_pair(tmp_path):
    """Sounds were described by kind alone ("Here is a warbling tone."), so the LLM never learnt to
    carry a requested length to the decoder, and a question about a sound never checked its length."""
    from anygpt.data.dialogs import make_dialogs, read_dialogs
    from anygpt.eval.benchmark import _labels_in

    manifest = tw.make_dataset(tmp_path, n_per_modality={"audio": 12}, seed=0)
    dialogs = read_dialogs(make_dialogs(manifest, 200, seed=0, mix={"make": 1.0, "ask": 1.0}, two_outputs=0.0))
    made = [(t["text"], o["caption"]) for d in dialogs for t in d["turns"] for o in t.get("outputs", [])
            if o["modality"] == "audio"]
    assert len(made) > 20
    for reply, caption in made:
        asked = _labels_in(caption, "audio")
        assert set(asked) == {"kind", "length"} and _labels_in(reply, "audio") == asked
        assert (asked["kind"], asked["length"]) not in tw.HELDOUT["audio"]
    described = [d for d in dialogs if d["kind"] == "ask" and d["expect"].get("about") == "audio"
                 and "length" in d["expect"]["answer"]]
    assert described  # "describe this sound." answers "A long rising sweep." and is checked for both
    for d in described:
        assert _labels_in(d["turns"][1]["text"], "audio") == d["expect"]["answer"]
    # with kinds_say_length, asked its kind, a sound is answered with its length too ("It is a long
    # noise burst."), and checked for the kind alone; everything else is as without
    truth = {Path(e["path"]).name: e["attributes"] for e in read_manifest(manifest)}
    told = read_dialogs(make_dialogs(manifest, 200, seed=0, mix={"make": 1.0, "ask": 1.0}, two_outputs=0.0,
                                     kinds_say_length=True))
    changed = [(d, t) for d, t in zip(dialogs, told) if d != t]
    assert changed
    for d, t in changed:
        labels = truth[Path(d["turns"][0]["media"][0]["path"]).name]
        assert d["expect"] == t["expect"] and d["expect"]["answer"] == {"kind": labels["kind"]}
        assert _labels_in(d["turns"][1]["text"], "audio") == {"kind": labels["kind"]}
        assert _labels_in(t["turns"][1]["text"], "audio") == {"kind": labels["kind"], "length": labels["length"]}


def test_novel_line_kinds_sound_as_described():
    """The kinds the world does not have, one line each (`NOVEL_LINES`): checked on their spectra."""
    rng = np.random.default_rng(0)
    specs = {}
    while len(specs) < len(tw.NOVEL_LINES):
        spec = tw.sample_novel_audio(rng, kinds=tw.NOVEL_LINES)
        specs.setdefault(spec.kind, spec)
    sr = tw.SAMPLE_RATE

    def peak(x):
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        return np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()]

    for kind, spec in specs.items():
        x = tw.render(spec)
        low, high = tw.LENGTHS[spec.length]
        assert low <= len(x) / sr <= high, kind
        if kind == "two-note call":
            n = len(x) // 2
            assert abs(peak(x[n // 4:3 * n // 4]) - spec.f0) < 20 and abs(peak(x[5 * n // 4:7 * n // 4]) - spec.f1) < 20
        elif kind == "siren":  # at the bottom at 0, at the top half a cycle later
            top = int(sr / (2 * spec.rate))
            assert abs(peak(x[top - 800:top + 800]) - spec.f1) < 0.1 * spec.f1
            assert abs(peak(x[:1600]) - spec.f0) < 0.1 * spec.f1
        elif kind == "tremolo tone":
            env = np.abs(x[int(0.1 * sr):int(0.9 * sr)]).reshape(-1, 80).max(1)  # 5 ms windows
            assert env.min() < 0.6 * env.max() and abs(peak(x) - spec.f0) < 20
        elif kind in ("drone", "squeal"):  # steady, outside the world's pitch bands
            n = len(x) // 2
            assert abs(peak(x[:n]) - spec.f0) < 5 and abs(peak(x[n:]) - spec.f0) < 5
            assert not any(lo <= spec.f0 <= hi for lo, hi in tw.PITCH_BANDS.values())
        elif kind == "crackle":  # silent but for clicks, spread over the whole sound
            loud = np.flatnonzero(np.abs(x) > 0.05 * np.abs(x).max())
            assert len(loud) < 0.01 * len(x) and loud.min() < 0.4 * len(x) and loud.max() > 0.6 * len(x)
        elif kind in ("noise band", "rumble", "sizzle"):
            power = np.abs(np.fft.rfft(x)) ** 2
            f = np.fft.rfftfreq(len(x), 1 / sr)
            assert power[(f >= spec.f0) & (f <= spec.f1)].sum() > 0.99 * power.sum()
    with pytest.raises(ValueError, match="novel kinds"):
        tw.sample_novel_audio(rng, kinds=("low tone",))  # a world kind is not novel
