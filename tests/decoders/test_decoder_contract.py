"""The conditioning contract and the errors: what a decoder takes, and clear messages when it is misused."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from decoder_cases import FAST, MODALITIES, SIZES
from decoders import (
    DECODERS,
    AudioDecoder,
    Conditioning,
    ConditioningError,
    DecoderError,
    ImageDecoder,
    VideoDecoder,
)


def test_registry_maps_modalities_to_decoder_classes():
    assert DECODERS == {"image": ImageDecoder, "audio": AudioDecoder, "video": VideoDecoder}
    assert all(cls.modality == m for m, cls in DECODERS.items())
    assert Conditioning(77, 768).shape == (77, 768)


@pytest.mark.parametrize("modality, expected", [("image", (77, 32)), ("audio", (1, 32)), ("video", (77, 32))])
def test_conditioning_of_the_tiny_decoders(loaded, modality, expected):
    assert loaded[modality].conditioning.shape == expected


@pytest.mark.parametrize("modality, expected", [("image", (77, 48)), ("audio", (1, 48)), ("video", (77, 48))])
def test_conditioning_is_read_from_the_checkpoint_not_from_code(tmp_path, modality, expected):
    """Swap in a checkpoint of another width: the declared shape follows it, and it decodes."""
    DECODERS[modality].tiny(seed=1, dim=48).save_pretrained(tmp_path / "wide")
    decoder = DECODERS[modality].from_pretrained(tmp_path / "wide")
    assert decoder.conditioning.shape == expected
    artifact = decoder.decode(torch.randn(*expected), seeds=[0], **FAST, **SIZES[modality])[0]
    assert artifact.meta["modality"] == modality


def test_image_conditioning_length_follows_the_tokenizer(tmp_path):
    assert ImageDecoder.tiny(tokens=16).conditioning.shape == (16, 32)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("shape", [(2, 77, 16), (2, 5, 32), (32,), (2, 1, 1, 32)])
def test_wrong_shape_names_the_expected_and_the_given_shape(loaded, modality, shape):
    decoder = loaded[modality]
    tokens, dim = decoder.conditioning.shape
    with pytest.raises(ConditioningError) as info:
        decoder.decode(torch.zeros(shape), seeds=[0] * (shape[0] if len(shape) > 1 else 1), **FAST,
                       **SIZES[modality])
    message = str(info.value)
    assert f"[batch, {tokens}, {dim}]" in message and str(list(shape)) in message
    assert isinstance(info.value, DecoderError) and isinstance(info.value, ValueError)


def test_negative_embeds_are_checked_too(loaded):
    decoder = loaded["image"]
    with pytest.raises(ConditioningError, match=re.escape("negative_prompt_embeds must have shape [batch, 77, 32]")):
        decoder.decode(torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(1, 77, 8), seeds=[0], **FAST)
    with pytest.raises(ConditioningError, match="3 rows for 2 prompt_embeds rows"):
        decoder.decode(torch.zeros(2, 77, 32), negative_prompt_embeds=torch.zeros(3, 77, 32), seeds=[0, 1], **FAST)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.decode([[0.0] * 32] * 77, seeds=[0], **FAST), "must be a torch.Tensor"),
    (lambda d: d.decode(torch.zeros(77, 32, dtype=torch.long), seeds=[0], **FAST), "floating point"),
    (lambda d: d.decode(torch.full((77, 32), float("nan")), seeds=[0], **FAST), "NaN"),
    (lambda d: d.decode(torch.zeros(2, 77, 32), seeds=[0], **FAST), "got 1 seeds for 2 artifacts"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=0, **FAST), "seeds must be a sequence"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[-1], **FAST), "seeds must be ints"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], num_inference_steps=0, guidance_scale=3.0), "from 1 to 1000"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], num_inference_steps=2, guidance_scale=-1), "guidance_scale"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], height=60, **FAST), "height must be a positive multiple of 8"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], width=512, **FAST), "at most 256"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], height=64.0, **FAST), "height must be"),
    (lambda d: d.decode(torch.zeros(77, 32), seeds=[0], num_frames=8, **FAST), r"unknown option\(s\) \['num_frames'\]"),
])
def test_bad_decode_arguments_get_a_clear_error(loaded, call, message):
    with pytest.raises(DecoderError, match=message):
        call(loaded["image"])


@pytest.mark.parametrize("kwargs, message", [
    ({"audio_length_in_s": 0.01}, "from 0.02 to 4"),
    ({"audio_length_in_s": 30.0}, "from 0.02 to 4"),
    ({"audio_length_in_s": "1s"}, "audio_length_in_s must be"),
    ({"height": 64}, "unknown option"),
])
def test_audio_length_limits(loaded, kwargs, message):
    with pytest.raises(DecoderError, match=message):
        loaded["audio"].decode(torch.zeros(1, 32), seeds=[0], **FAST, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_frames": 0}, "num_frames must be an int from 1 to 64"),
    ({"num_frames": 100}, "num_frames must be an int from 1 to 64"),
    ({"fps": 0}, "fps must be"),
    ({"width": 36}, "width must be a positive multiple of 8"),
])
def test_video_size_limits(loaded, kwargs, message):
    with pytest.raises(DecoderError, match=message):
        loaded["video"].decode(torch.zeros(77, 32), seeds=[0], **FAST, **kwargs)


def test_scheduler_names_are_checked(loaded):
    with pytest.raises(DecoderError, match="unknown scheduler 'fast'"):
        loaded["image"].set_scheduler("fast")
    # TextToVideoSD steps every frame as one scheduler batch; per-artifact noise cannot feed euler_a.
    with pytest.raises(DecoderError, match="unknown scheduler 'euler_a' for the video decoder"):
        loaded["video"].set_scheduler("euler_a")


def test_tiny_options_are_checked():
    with pytest.raises(DecoderError, match=r"unknown option\(s\) \['colour'\] for the tiny image decoder"):
        ImageDecoder.tiny(colour="red")


def test_tiny_is_deterministic_given_the_seed():
    a, b, c = ImageDecoder.tiny(seed=3), ImageDecoder.tiny(seed=3), ImageDecoder.tiny(seed=4)
    wa, wb, wc = (d.pipeline.unet.conv_in.weight for d in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# -- loading from folders ------------------------------------------------------------------------

@pytest.mark.parametrize("modality", MODALITIES)
def test_missing_folder_is_a_decoder_error(tmp_path, modality):
    with pytest.raises(DecoderError, match=f"{modality} decoder folder not found: .*nowhere"):
        DECODERS[modality].from_pretrained(tmp_path / "nowhere")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DecoderError, match="not a diffusers pipeline folder"):
        ImageDecoder.from_pretrained(tmp_path)


def test_folder_of_another_pipeline(saved_folders):
    with pytest.raises(DecoderError, match="holds a StableDiffusionPipeline, but the audio decoder needs a "
                                           "AudioLDMPipeline"):
        AudioDecoder.from_pretrained(saved_folders["image"])


def test_folder_with_a_missing_component(saved_folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_folders["audio"], broken)
    shutil.rmtree(broken / "vocoder")
    with pytest.raises(DecoderError, match="lists components without their folders: vocoder"):
        AudioDecoder.from_pretrained(broken)


def test_folder_with_broken_weights(saved_folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_folders["image"], broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(DecoderError, match="cannot load the image pipeline from"):
        ImageDecoder.from_pretrained(broken)


def test_real_sd_layout_with_safety_checker_entries_loads(saved_folders, tmp_path):
    """SD v1.5's model_index.json lists safety_checker and feature_extractor; the decoder skips them."""
    folder = tmp_path / "sd15-layout"
    shutil.copytree(saved_folders["image"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    decoder = ImageDecoder.from_pretrained(folder, model_id="sd-v1-5")
    assert decoder.pipeline.safety_checker is None and decoder.model_id == "sd-v1-5"


def test_bad_dtype_and_unavailable_device(saved_folders):
    with pytest.raises(DecoderError, match="unknown dtype 'float8'"):
        ImageDecoder.from_pretrained(saved_folders["image"], torch_dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(DecoderError, match="CUDA is not available"):
            ImageDecoder.from_pretrained(saved_folders["image"], device="cuda", cpu_offload=True)


# -- the offline tokenizers of the tiny decoders ---------------------------------------------------

def test_tiny_clip_tokenizer_is_openais_vocabulary(loaded):
    """Built from the BPE merges in the imagebind package exactly as OpenAI's SimpleTokenizer builds
    its vocabulary: the ids are CLIP's own (49406 = <|startoftext|>, 320 = "a", 1125 = "photo")."""
    tokenizer = loaded["image"].pipeline.tokenizer
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_without_the_bpe_file_the_clip_tokenizer_is_byte_level(monkeypatch):
    from decoders import _tiny

    monkeypatch.setattr(_tiny, "_clip_bpe_file", lambda: None)
    _tiny.clip_vocabulary.cache_clear()
    try:
        tokenizer, _ = _tiny.clip_text_encoder(dim=8, tokens=16)
        ids = tokenizer("a cat").input_ids
    finally:
        _tiny.clip_vocabulary.cache_clear()
    assert len(tokenizer) == 2 * 256 + 2
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "c", "a", "t</w>", "<|endoftext|>"]


def test_encode_text_wants_a_list_of_strings(loaded):
    for bad in ("a cat", [], ["a", 3]):
        with pytest.raises(DecoderError, match="non-empty list of strings"):
            loaded["image"].encode_text(bad)
