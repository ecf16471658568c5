"""The probes on generated ground truth: >= 99% on clean data (also after the file round trip), and
a bound under noise. Run with -s to see the measured accuracies."""

from __future__ import annotations

import functools
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from anygpt.data import toyworld as tw
from anygpt.data.manifest import read_manifest
from anygpt.eval.probes import UNKNOWN, probe_audio, probe_depth, probe_image, probe_text, probe_video

N = 300


def _probe(modality: str, data: np.ndarray, sample_rate: int = tw.SAMPLE_RATE) -> dict:
    if modality == "audio":
        return probe_audio(data, sample_rate)
    return {"image": probe_image, "video": probe_video, "depth": probe_depth}[modality](data)


def _accuracy(cases, label: str) -> dict[str, float]:
    """Per-attribute accuracy of (probe output, true labels) pairs; prints it and the commonest mistakes."""
    cases = list(cases)
    keys = cases[0][1].keys()
    acc = {k: sum(out[k] == truth[k] for out, truth in cases) / len(cases) for k in keys}
    mistakes = Counter((k, truth[k], out[k]) for out, truth in cases for k in keys if out[k] != truth[k])
    print(f"\n{label}: n={len(cases)} " + " ".join(f"{k}={v:.3f}" for k, v in acc.items()), mistakes.most_common(3))
    return acc


@functools.cache
def _generated(modality: str, n: int = N, split: str = "train", **kwargs) -> tuple:
    """(spec, array) pairs covering every attribute value (video: half as many, its probe being the slowest;
    all 300 of it are checked after the MP4 round trip)."""
    n = n // 2 if modality == "video" and n == N else n
    return tuple((spec, tw.render(spec)) for spec in
                 (tw.sample(modality, np.random.default_rng([11, i]), split, **kwargs) for i in range(n)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """N examples of each modality written to disk (PNG, WAV, MP4, 16-bit PNG) and read back."""
    manifest = tw.make_dataset(tmp_path_factory.mktemp("toy"), n_per_modality=N, seed=2)
    return read_manifest(manifest)


def _gauss(sigma: float):
    def add(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = x + rng.normal(0, sigma, x.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8) if x.dtype == np.uint8 else noisy.astype(np.float32)
    return add


def _jpeg(quality: int):
    def compress(x: np.ndarray, rng) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf).convert("RGB"))
    return compress


def _blur(radius: float):
    return lambda x, rng: np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius)))


def _snr(db: float):
    def add(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = np.sqrt(np.mean(x ** 2)) / 10 ** (db / 20)
        return (x + rng.normal(0, sigma, x.shape)).astype(np.float32)
    return add


# ---------------------------------------------------------------- clean data, in memory and after the file round trip
@pytest.mark.parametrize("modality", tw.MODALITIES)
def test_probe_on_clean_data(modality):
    cases = _generated(modality)
    covered = {k: {s.labels()[k] for s, _ in cases} for k in tw.LABELS[modality]}
    assert all(covered[k] == set(tw.VALUES[modality][k]) for k in covered)  # every value is tested
    acc = _accuracy([(_probe(modality, x), s.labels()) for s, x in cases], f"{modality} clean")
    assert min(acc.values()) >= 0.99


@pytest.mark.parametrize("modality", tw.MODALITIES)
def test_probe_after_file_round_trip(modality, dataset):
    """What training and evaluation actually read: PNG, 16-bit PCM WAV, H.264 MP4, 16-bit PNG."""
    cases = []
    for r in (r for r in dataset if r["modality"] == modality):
        if modality == "audio":
            wave, sr = tw.load_audio(r["path"])
            out = probe_audio(wave, sr)
        else:
            out = _probe(modality, tw.load(modality, r["path"]))
        cases.append((out, {k: r["attributes"][k] for k in tw.LABELS[modality]}))
    assert len(cases) == N
    assert min(_accuracy(cases, f"{modality} from files").values()) >= 0.99


def test_probe_on_heldout_combinations():
    for modality in ("image", "video"):
        cases = _generated(modality, 100, "heldout")
        assert min(_accuracy([(_probe(modality, x), s.labels()) for s, x in cases], f"{modality} heldout").values()) >= 0.99


def test_probe_image_at_other_sizes_and_float_input():
    for canvas in (32, 128):
        cases = _generated("image", 100, canvas=canvas)
        assert min(_accuracy([(probe_image(x), s.labels()) for s, x in cases], f"image {canvas}px").values()) >= 0.97
    spec, x = _generated("image", 1)[0]
    assert probe_image(x.astype(np.float32) / 255) == spec.labels()


def test_probe_audio_at_other_sample_rates():
    for rate in (22050, 44100):
        cases = _generated("audio", 48, sample_rate=rate)
        assert min(_accuracy([(probe_audio(x, rate), s.labels()) for s, x in cases], f"audio {rate} Hz").values()) >= 0.99
    spec, x = _generated("audio", 1)[0]
    assert probe_audio((x * 32767).astype(np.int16), 16000) == spec.labels()  # int PCM
    assert probe_audio(np.stack([x, x], axis=1), 16000) == spec.labels()  # stereo


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("modality, damage, name, bound", [
    ("image", _gauss(20), "gaussian sigma=20/255", 0.95),
    ("image", _jpeg(30), "JPEG quality 30", 0.95),
    ("image", _blur(1.5), "gaussian blur r=1.5", 0.95),
    ("video", _gauss(20), "gaussian sigma=20/255", 0.95),
    ("depth", _gauss(0.03), "gaussian sigma=0.03", 0.95),
    ("audio", _snr(10), "white noise at 10 dB SNR", 0.95),
    ("audio", _snr(0), "white noise at 0 dB SNR", 0.9),
])
def test_probe_under_damage(modality, damage, name, bound):
    rng = np.random.default_rng(0)
    cases = [(_probe(modality, damage(x, rng)), s.labels()) for s, x in _generated(modality)]
    acc = _accuracy(cases, f"{modality} {name}")
    keys = [k for k in acc if not (modality == "audio" and k == "length")]  # noise fills the silence: length is moot
    assert min(acc[k] for k in keys) >= bound


# ---------------------------------------------------------------- nothing to judge
def test_probes_say_unknown_when_there_is_nothing():
    rng = np.random.default_rng(0)
    blank = np.full((64, 64, 3), 20, np.uint8)
    assert probe_image(blank) == {"color": UNKNOWN, "shape": UNKNOWN}
    assert probe_image(_gauss(5)(blank, rng)) == {"color": UNKNOWN, "shape": UNKNOWN}
    grey = blank.copy()
    grey[20:40, 20:40] = 200
    assert probe_image(grey) == {"color": UNKNOWN, "shape": "square"}  # no hue: no colour guess
    assert probe_video(np.stack([blank] * 8))["direction"] == UNKNOWN
    assert probe_depth(np.zeros((64, 64), np.float32)) == {"shape": UNKNOWN, "distance": UNKNOWN}
    assert probe_audio(np.zeros(16000, np.float32), 16000)["kind"] == UNKNOWN
    spec = tw.sample_video(np.random.default_rng(0))
    still = np.stack([tw.render(spec)[0]] * 8)
    assert probe_video(still)["direction"] == "none"
    with pytest.raises(ValueError):
        probe_image(np.zeros((64, 64)))


def test_probe_text_on_free_replies():
    assert probe_text("I see a small Red ball near the top.", "image") == {"color": "red", "shape": "circle"}
    assert probe_text("It's a violet triangle moving to the right.", "video") == {
        "color": "purple", "shape": "triangle", "direction": "right"}
    assert probe_text("a tone rising from low to high", "audio") == {"kind": "rising sweep", "length": None}
    assert probe_text("a brief, deep hum", "audio") == {"kind": "low tone", "length": "short"}
    assert probe_text("a square far away", "depth") == {"shape": "square", "distance": "far"}
    assert probe_text("nothing here", "image") == {"color": None, "shape": None}
    assert probe_text("a background", "image")["shape"] is None  # whole words only


def test_pitch_track_follows_a_falling_sweep_and_marks_silence():
    from anygpt.eval.probes import pitch_track

    spec = tw.sample("audio", tw.example_rng(3, "train", "audio", 0), "train", kind="falling sweep", length="long")
    wave = np.concatenate([tw.render(spec), np.zeros(tw.SAMPLE_RATE // 2, dtype=np.float32)])
    track = pitch_track(wave, tw.SAMPLE_RATE)
    heard = [f for _, f in track if f is not None]
    assert len(heard) >= 8 and heard[0] > 1.5 * heard[-1]  # it falls
    assert abs(heard[0] - spec.f0) < 0.15 * spec.f0  # and starts where the sweep starts
    assert track[-1][1] is None  # the half second of silence at the end


def test_audio_sample_writes_the_sound_and_what_it_holds(tmp_path):
    import json

    import soundfile as sf

    from anygpt.eval.benchmark import audio_sample
    from decoders.media import AudioArtifact

    spec = tw.sample("audio", tw.example_rng(4, "train", "audio", 0), "train", kind="high tone")
    info = audio_sample("a high tone", AudioArtifact(tw.render(spec), tw.SAMPLE_RATE), tmp_path / "sample")
    wave, sr = sf.read(tmp_path / "sample.wav")
    assert sr == tw.SAMPLE_RATE and abs(len(wave) / sr - spec.duration) < 0.01
    saved = json.loads((tmp_path / "sample.json").read_text())
    assert saved["probe"]["kind"] == info["probe"]["kind"] == "high tone"
    heard = [f for _, f in saved["pitch_track_hz"] if f is not None]
    assert heard and all(abs(f - spec.f0) < 0.05 * spec.f0 for f in heard)
