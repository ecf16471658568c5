"""Tiny pipelines of each kind, loaded from disk through `from_pretrained`, decode real media files."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from decoder_cases import FAST, MODALITIES, SIZES
from decoders import DECODERS, AudioArtifact, ImageArtifact, read_provenance

EXT = {"image": "png", "audio": "wav", "video": "mp4"}


def embeds(decoder, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *decoder.conditioning.shape, generator=torch.Generator().manual_seed(seed))


def values(artifact) -> np.ndarray:
    """The artifact's samples as float64, for comparisons."""
    if isinstance(artifact, ImageArtifact):
        return np.asarray(artifact.image, dtype=np.float64)
    if isinstance(artifact, AudioArtifact):
        return artifact.waveform.astype(np.float64)
    return artifact.frames.astype(np.float64)


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("modality", MODALITIES)
def test_loaded_checkpoint_decodes_a_batch_into_files_that_open(loaded, saved_folders, tmp_path, modality):
    decoder = loaded[modality]
    prompt_embeds = embeds(decoder, 2, seed=1)
    artifacts = decoder.decode(prompt_embeds, seeds=[11, 12], **FAST, **SIZES[modality])
    assert len(artifacts) == 2

    for i, artifact in enumerate(artifacts):
        path = artifact.save(tmp_path / f"{modality}_{i}.{EXT[modality]}")
        if modality == "image":
            with Image.open(path) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
                pixels = np.asarray(im)
            assert np.array_equal(pixels, np.asarray(artifact.image))
            assert pixels.std() > 1.0  # a picture, not a flat colour
        elif modality == "audio":
            info = sf.info(path)
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
            assert info.frames == 16000 and info.duration == pytest.approx(1.0)
            samples, _ = sf.read(path, dtype="int16")
            assert np.count_nonzero(samples) > 1000  # audible at 16-bit, not rounded to silence
            assert np.abs(samples / 32768 - artifact.waveform).max() <= 1 / 32768 + 1e-6
        else:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264"
                assert stream.average_rate == 8
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
            assert frames.shape == (8, 64, 64, 3)
            # Lossy (and yuv420p halves the colour resolution), but the brightness is this video's.
            error = np.abs(luma(frames) - luma(artifact.frames)).mean()
            assert error < 5 and error < np.abs(luma(frames) - luma(artifacts[1 - i].frames)).mean() / 3

        meta = read_provenance(path)
        assert meta == artifact.meta
        row = prompt_embeds[i].numpy().astype("<f4")
        assert meta["conditioning_sha256"] == hashlib.sha256(row.tobytes()).hexdigest()
        assert meta["seed"] == 11 + i and meta["modality"] == modality
        assert meta["model_id"] == saved_folders[modality].name
        assert meta["num_inference_steps"] == 2 and meta["guidance_scale"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{modality}_{i}.{EXT[modality]}" for i in range(2)]


@pytest.mark.parametrize("modality", MODALITIES)
def test_save_and_load_round_trip_gives_the_same_output(tiny_decoders, loaded, modality):
    prompt_embeds = embeds(loaded[modality], 1, seed=2)
    a = tiny_decoders[modality].decode(prompt_embeds, seeds=[3], **FAST, **SIZES[modality])[0]
    b = loaded[modality].decode(prompt_embeds, seeds=[3], **FAST, **SIZES[modality])[0]
    assert np.array_equal(values(a), values(b))
    assert loaded[modality].conditioning == tiny_decoders[modality].conditioning


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_same_output_other_seed_or_embeds_differ(loaded, modality):
    decoder = loaded[modality]
    x, y = embeds(decoder, 1, seed=4), embeds(decoder, 1, seed=5)
    run = lambda e, s: values(decoder.decode(e, seeds=[s], **FAST, **SIZES[modality])[0])  # noqa: E731
    first = run(x, 7)
    spread = first.std()
    assert spread > 0 and np.array_equal(first, run(x, 7))
    assert np.abs(first - run(x, 8)).mean() > 0.2 * spread  # another seed: other noise
    # Other conditioning, other media (random weights respond weakly to random embeddings: a few %).
    assert np.abs(first - run(y, 7)).mean() > 0.02 * spread


@pytest.mark.parametrize("modality", MODALITIES)
def test_batch_decoding_is_one_call_and_matches_single_decodes(loaded, monkeypatch, modality):
    """Each row of a batch is the artifact its own seed makes alone; the batch is one pipeline call."""
    decoder = loaded[modality]
    prompt_embeds = embeds(decoder, 2, seed=6)
    calls = []
    pipeline_call = type(decoder.pipeline).__call__
    monkeypatch.setattr(type(decoder.pipeline), "__call__",
                        lambda pipe, *a, **k: calls.append(k) or pipeline_call(pipe, *a, **k))
    batch = decoder.decode(prompt_embeds, seeds=[21, 22], **FAST, **SIZES[modality])
    assert len(calls) == 1 and len(calls[0]["generator"]) == 2
    monkeypatch.undo()
    for i, seed in enumerate([21, 22]):
        alone = decoder.decode(prompt_embeds[i], seeds=[seed], **FAST, **SIZES[modality])[0]
        assert np.abs(values(alone) - values(batch[i])).max() <= (1.0 if modality != "audio" else 1e-4)
    assert [a.meta["seed"] for a in batch] == [21, 22]


@pytest.mark.parametrize("modality", MODALITIES)
def test_decoding_never_runs_the_text_encoder_on_a_prompt(tiny_decoders, monkeypatch, modality):
    """The text encoder sees only "" (once, cached, for the guidance negative), and nothing at all
    when the caller brings the negative; the pipeline gets embeddings only, never prompt text."""
    decoder = type(tiny_decoders[modality]).tiny(seed=0)  # fresh: nothing cached yet
    pipe = decoder.pipeline
    texts, encoder_inputs, calls = [], [], []
    tokenizer_call = type(pipe.tokenizer).__call__
    monkeypatch.setattr(type(pipe.tokenizer), "__call__",
                        lambda tok, text, *a, **k: texts.append(text) or tokenizer_call(tok, text, *a, **k))
    pipe.text_encoder.register_forward_hook(lambda module, args, kwargs, out: encoder_inputs.append(1),
                                            with_kwargs=True)
    pipeline_call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda p, *a, **k: calls.append((a, k)) or pipeline_call(p, *a, **k))

    prompt_embeds = embeds(decoder, 2, seed=8)
    decoder.decode(prompt_embeds, seeds=[0, 1], **FAST, **SIZES[modality])
    decoder.decode(prompt_embeds, seeds=[2, 3], **FAST, **SIZES[modality])
    # Only "" was tokenized (SD tokenizes twice, to check for truncation) and encoded once: the
    # cached unconditional embedding.
    assert texts and all(text == [""] for text in texts) and len(encoder_inputs) == 1
    seen = len(texts)

    negative = torch.zeros(*decoder.conditioning.shape)
    fresh = type(decoder)(pipe, model_id="fresh")  # no cache: would have to encode "" if it needed it
    fresh.decode(prompt_embeds, negative_prompt_embeds=negative, seeds=[0, 1], **FAST, **SIZES[modality])
    fresh.decode(prompt_embeds, seeds=[0, 1], num_inference_steps=2, guidance_scale=1.0, **SIZES[modality])
    assert len(texts) == seen and len(encoder_inputs) == 1

    for args, kwargs in calls:
        assert not args and "prompt" not in kwargs and "negative_prompt" not in kwargs
        assert kwargs["prompt_embeds"].reshape(2, -1).equal(prompt_embeds.reshape(2, -1))
    assert calls[2][1]["negative_prompt_embeds"].reshape(2, -1).equal(negative.reshape(1, -1).expand(2, -1))
    assert calls[3][1]["negative_prompt_embeds"] is None  # guidance off: no negative at all


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_unconditional_embedding_is_the_pipelines_own_encoding_of_nothing(loaded, modality):
    decoder = loaded[modality]
    uncond = decoder.unconditional_embeds()
    assert tuple(uncond.shape) == decoder.conditioning.shape
    assert torch.equal(uncond, decoder.encode_text([""])[0])
    captions = decoder.encode_text(["a red circle", "a rising tone"])
    assert tuple(captions.shape) == (2, *decoder.conditioning.shape)
    assert not torch.allclose(captions[0], captions[1]) and not torch.allclose(captions[0], uncond)
    if modality == "audio":  # CLAP embeddings are L2-normalised, as AudioLDM computes them
        assert torch.allclose(captions.norm(dim=-1), torch.ones(2, 1), atol=1e-5)


def test_other_sizes_within_the_limits(loaded):
    image = loaded["image"].decode(embeds(loaded["image"], 1, 0), seeds=[0], height=32, width=96, **FAST)[0]
    assert image.image.size == (96, 32)
    for seconds in (0.5, 0.29):  # 0.29 / 0.01 floors to 28 mel frames in floating point: still 0.29 s
        audio = loaded["audio"].decode(embeds(loaded["audio"], 1, 0), seeds=[0], audio_length_in_s=seconds,
                                       **FAST)[0]
        assert audio.waveform.shape == (round(seconds * 16000),) and audio.meta["audio_length_in_s"] == seconds
    video = loaded["video"].decode(embeds(loaded["video"], 1, 0), seeds=[0], num_frames=3, height=32, width=64,
                                   fps=12, **FAST)[0]
    assert video.frames.shape == (3, 32, 64, 3) and video.fps == 12 and video.meta["fps"] == 12


def test_defaults_are_the_models_native_size(loaded):
    """With no size options, the size comes from the checkpoint's configs (the UNet's sample size)."""
    image = loaded["image"].decode(embeds(loaded["image"], 1, 0), seeds=[0], **FAST)[0]
    assert image.image.size == (64, 64)
    audio = loaded["audio"].decode(embeds(loaded["audio"], 1, 0), seeds=[0], **FAST)[0]
    assert audio.sample_rate == 16000 and audio.waveform.shape == (16000,)


@pytest.mark.parametrize("name, cls", [("dpm++", "DPMSolverMultistepScheduler"), ("euler", "EulerDiscreteScheduler")])
def test_scheduler_choice(tiny_decoders, name, cls):
    decoder = type(tiny_decoders["image"]).tiny(seed=0)
    before = decoder.decode(embeds(decoder, 1, 0), seeds=[0], **FAST)[0]
    decoder.set_scheduler(name)
    assert decoder.scheduler == cls
    after = decoder.decode(embeds(decoder, 1, 0), seeds=[0], **FAST)[0]
    assert after.meta["scheduler"] == cls and after.image.size == (64, 64)
    assert not np.array_equal(values(before), values(after))
    assert decoder.pipeline.scheduler.config.beta_schedule == "scaled_linear"  # the checkpoint's noise schedule


def test_reduced_precision_loading(saved_folders):
    decoder = DECODERS["image"].from_pretrained(saved_folders["image"], torch_dtype="bfloat16")
    assert decoder.pipeline.unet.dtype == torch.bfloat16
    image = decoder.decode(torch.randn(1, *decoder.conditioning.shape), seeds=[0], **FAST)[0]
    assert image.image.size == (64, 64)


def test_a_zero_snr_decoder_refuses_a_sampler_that_would_drop_its_schedule(tiny_decoders):
    """PNDM and LMS have no rescale_betas_zero_snr: switching to them would sample a schedule the UNet
    was not trained on, so the switch is refused by name; DDIM, Euler and DPM++ keep it."""
    from anygpt.train.tiny_decoders import zero_terminal_snr
    from decoders import DecoderError

    decoder = type(tiny_decoders["image"]).tiny(seed=0)
    zero_terminal_snr(decoder)
    with pytest.raises(DecoderError, match="'pndm' cannot keep .* zero-terminal-SNR"):
        decoder.set_scheduler("pndm")
    assert decoder.scheduler == "DDIMScheduler"
    decoder.set_scheduler("euler")
    assert decoder.pipeline.scheduler.config.rescale_betas_zero_snr
    assert decoder.pipeline.scheduler.alphas_cumprod[-1] < 1e-6
