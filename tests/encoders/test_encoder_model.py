"""The encoder: checkpoint layouts, save/load, input types, cache, training use."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from encoder_media import decode_frames, pattern_image
from PIL import Image

from encoders import MODALITIES, CheckpointError, ImageBindConfig, ImageBindEncoder, MediaError
from encoders.imagebind import _parameters_on_meta, build_model


def sample_inputs(media_dir) -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "image": media_dir / "landscape.png",
        "audio": media_dir / "mono16k.wav",
        "video": media_dir / "landscape12fps.mp4",
        "depth": np.linspace(1, 50, 60 * 80, dtype=np.float32).reshape(60, 80),
        "thermal": media_dir / "gray.png",
        "imu": rng.normal(size=(6, 2400)).astype(np.float32),
    }


def embed_all(encoder: ImageBindEncoder, inputs: dict[str, object]) -> dict[str, torch.Tensor]:
    out = {m: encoder.encode(m, [x]) for m, x in inputs.items()}
    out["text"] = encoder.encode_text(["a red square", "a falling tone"])
    return out


def assert_same_encoder(loaded: ImageBindEncoder, original: ImageBindEncoder, media_dir) -> None:
    """Bit-identical weights; embeddings equal up to float noise (tensor alignment can change
    which SIMD path a kernel takes, so the last bit may differ)."""
    a, b = loaded.model.state_dict(), original.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = sample_inputs(media_dir)
    got, want = embed_all(loaded, inputs), embed_all(original, inputs)
    for modality in want:
        assert torch.allclose(got[modality], want[modality], atol=1e-5, rtol=0), modality


def test_every_modality(encoder, media_dir):
    embeddings = embed_all(encoder, sample_inputs(media_dir))
    assert set(embeddings) == set(MODALITIES) | {"text"}
    for modality, e in embeddings.items():
        assert e.dtype == torch.float32 and e.device.type == "cpu" and torch.isfinite(e).all(), modality
        assert e.shape[1] == encoder.embed_dim == 64
    # ImageBind's postprocessors: unit norm, times a fixed scale per modality (clips averaged)
    assert torch.allclose(embeddings["image"].norm(dim=-1), torch.tensor(1.0), atol=1e-5)
    for modality, scale in [("depth", 5.0), ("thermal", 10.0), ("imu", 5.0)]:
        assert torch.allclose(embeddings[modality].norm(dim=-1), torch.tensor(scale), atol=1e-4)
    assert 0 < embeddings["audio"].norm() <= 20 + 1e-4 and 0 < embeddings["video"].norm() <= 1 + 1e-5


def test_tiny_is_deterministic():
    a, b, c = (ImageBindEncoder.tiny(seed=s).model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_official_checkpoint_layout_loads_through_huge_path(encoder, media_dir, tmp_path):
    """A tiny model saved as imagebind_huge.pth is (a plain state_dict) loads via from_checkpoint."""
    path = tmp_path / "imagebind_tiny.pth"
    torch.save(encoder.model.state_dict(), path)
    with _parameters_on_meta():
        huge_keys = set(build_model(ImageBindConfig.huge()).state_dict())
    tiny_keys = set(torch.load(path, weights_only=True))
    assert tiny_keys <= huge_keys  # the official key names (huge has more blocks of each)
    assert {re.sub(r"blocks\.\d+", "blocks.N", k) for k in huge_keys - tiny_keys} <= \
        {re.sub(r"blocks\.\d+", "blocks.N", k) for k in tiny_keys}
    loaded = ImageBindEncoder.from_checkpoint(path, config=ImageBindConfig.tiny())
    assert_same_encoder(loaded, encoder, media_dir)


def test_checkpoint_errors(encoder, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ImageBindEncoder.from_checkpoint(tmp_path / "imagebind_huge.pth")
    path = tmp_path / "tiny.pth"
    state = encoder.model.state_dict()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="shape mismatches.*modality_preprocessors"):
        ImageBindEncoder.from_checkpoint(path)  # the huge config
    torch.save({k: v for k, v in state.items() if "imu" not in k} | {"head.extra": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*imu.*unexpected keys.*head\.extra"):
        ImageBindEncoder.from_checkpoint(path, config=ImageBindConfig.tiny())
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ImageBindEncoder.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a saved ImageBind encoder"):
        ImageBindEncoder.from_pretrained(tmp_path)


def test_save_pretrained_round_trip(encoder, media_dir, tmp_path):
    encoder.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert config["out_embed_dim"] == 64 and config["kernel_size"] == [2, 14, 14]
    for loaded in (ImageBindEncoder.from_pretrained(tmp_path / "enc"),
                   ImageBindEncoder.from_checkpoint(tmp_path / "enc")):  # a folder is passed on
        assert loaded.config == encoder.config
        assert_same_encoder(loaded, encoder, media_dir)


def test_low_precision(encoder, media_dir, tmp_path):
    """The dtype path used for float16 on GPU, run here in bfloat16 on CPU."""
    encoder.save_pretrained(tmp_path / "enc")
    low = ImageBindEncoder.from_checkpoint(tmp_path / "enc", dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    for modality in ("image", "audio"):
        x = sample_inputs(media_dir)[modality]
        a, b = encoder.encode(modality, x), low.encode(modality, x)
        assert b.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a, b).item() > 0.99
    assert low.encode_text("a cat").dtype == torch.float32


def test_input_types(encoder, media_dir):
    path = media_dir / "landscape.png"
    pixels = np.array(Image.open(path).convert("RGB"))
    want = encoder.encode("image", [path])
    items = [str(path), path, path.read_bytes(), Image.open(path), pixels, torch.from_numpy(pixels).permute(2, 0, 1)]
    for item in items:
        assert torch.equal(encoder.encode("image", item), want), type(item)  # one item alone is a batch of one
    batch = encoder.encode("image", items + [pattern_image(64, 64, 9)])
    assert batch.shape == (len(items) + 1, 64)
    assert torch.equal(batch[:-1], want.expand(len(items), -1))
    assert not torch.equal(batch[-1], want[0])
    assert encoder.encode("image", []).shape == (0, 64)


def test_cache_avoids_reencoding(media_dir):
    encoder = ImageBindEncoder.tiny(seed=0)
    calls = []
    encoder.model.register_forward_hook(lambda module, args, out: calls.append(len(next(iter(out.values())))))
    path = media_dir / "landscape.png"
    first = encoder.encode("image", path)
    encoder.encode("image", str(path))  # same content: cached
    encoder.encode("image", path.read_bytes())  # same bytes, no path: cached too
    assert calls == [1]
    other = pattern_image(80, 80, 11)
    out = encoder.encode("image", [path, other, path, other.copy()])
    assert calls == [1, 1]  # one pass, for the one new item
    assert torch.equal(out[0], first[0]) and torch.equal(out[1], out[3])
    encoder.encode("thermal", path)  # another modality is another entry
    assert calls == [1, 1, 1]
    encoder.encode_text(["hello", "hello"])
    encoder.encode_text("hello")
    assert calls == [1, 1, 1, 1]
    encoder.clear_cache()
    encoder.encode("image", path)
    assert calls == [1, 1, 1, 1, 1]


def test_cache_is_bounded(media_dir):
    encoder = ImageBindEncoder.tiny(seed=0, cache_size=2)
    images = [pattern_image(40, 40, i) for i in range(3)]
    encoder.encode("image", images)
    assert len(encoder._cache) == 2
    uncached = ImageBindEncoder.tiny(seed=0, cache_size=0)
    assert torch.allclose(uncached.encode("image", images), encoder.encode("image", images), atol=1e-6)
    assert len(uncached._cache) == 0


def test_video_clip_batch_and_array(encoder, media_dir):
    path = media_dir / "portrait8fps.mp4"
    both = encoder.encode("video", [path, decode_frames(path)])  # an array is taken at 8 fps
    assert torch.equal(both[0], both[1])


def test_training_use(media_dir):
    """encode() gives ordinary tensors for trained layers; prepare() + forward() carry gradients."""
    encoder = ImageBindEncoder.tiny(seed=0)
    projector = torch.nn.Linear(encoder.embed_dim, 8)
    projector(encoder.encode("image", media_dir / "landscape.png")).sum().backward()
    assert projector.weight.grad is not None
    batch = encoder.prepare("audio", [media_dir / "mono16k.wav", media_dir / "short16k.wav"])
    assert batch.shape == (2, 3, 1, 128, 204)
    encoder.train()
    encoder("audio", batch).sum().backward()
    assert encoder.model.modality_heads["audio"][2].weight.grad is not None
    tokens = encoder.tokenize(["a tone"])
    assert encoder("text", tokens).shape == (1, 64)


def test_unknown_modality(encoder):
    with pytest.raises(MediaError, match="unknown modality 'smell'"):
        encoder.encode("smell", [b"x"])
    with pytest.raises(MediaError, match="strings"):
        encoder.encode_text([b"bytes"])


def _centroid_x(frame: torch.Tensor) -> float:
    """Mean column of the pixels that differ from the background (frame: [3, H, W])."""
    diff = (frame - frame[:, :1, :1]).abs().sum(0)
    return float(torch.nonzero(diff > diff.max() / 2)[:, 1].float().mean())


def test_tiny_video_clips_see_local_motion():
    """The tiny preset takes 5 clips 0.25 s long: on a 1-s toy clip each holds a small step of the
    motion. ImageBind's 2-s clips would all be the same first/last frames, 80 px apart."""
    from anygpt.data import toyworld as tw

    spec = tw.sample("video", tw.example_rng(5, "train", "video", 0), "train", direction="right")
    clip = tw.render(spec)
    assert clip.shape[0] / spec.fps <= 2
    tiny = ImageBindEncoder.tiny()
    two_seconds = dataclasses.replace(tiny.config, video_clip_duration=2.0)  # ImageBind's own
    wide_clips = ImageBindEncoder(two_seconds, build_model(two_seconds))
    steps = [[_centroid_x(c[:, f]) for f in range(2)] for c in tiny.prepare("video", clip)[0, ::3]]
    starts = [a for a, _ in steps]
    assert all(0 < b - a < 14 for a, b in steps), steps  # under one 14-px patch, rightwards
    assert starts == sorted(starts) and starts[-1] - starts[0] > 40  # the clips spread over the motion
    wide = [[_centroid_x(c[:, f]) for f in range(2)] for c in wide_clips.prepare("video", clip)[0, ::3]]
    assert all(b - a > 60 for a, b in wide) and len({tuple(w) for w in wide}) == 1


def test_clip_duration_round_trips_and_defaults_to_imagebinds(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "enc")
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert config["video_clip_duration"] == 0.25
    assert ImageBindEncoder.from_pretrained(tmp_path / "enc").config.video_clip_duration == 0.25
    del config["video_clip_duration"]  # a folder saved before the field existed: ImageBind's 2 s
    (tmp_path / "enc" / "config.json").write_text(json.dumps(config))
    assert ImageBindEncoder.from_pretrained(tmp_path / "enc").config.video_clip_duration == 2.0
    assert ImageBindConfig.huge().video_clip_duration == 2.0


def test_audio_pad_round_trips_and_defaults_to_imagebinds(encoder, tmp_path):
    """The tiny preset pads short sounds with silence; a folder saved before the field existed, and
    ImageBind-huge, keep data.py's zero fbank frames."""
    assert encoder.config.audio_pad == "silence" and ImageBindConfig.huge().audio_pad == "fbank"
    encoder.save_pretrained(tmp_path / "enc")
    path = tmp_path / "enc" / "config.json"
    config = json.loads(path.read_text())
    assert config["audio_pad"] == "silence"
    burst = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000).astype(np.float32)
    silence = ImageBindEncoder.from_pretrained(tmp_path / "enc").prepare("audio", [burst])
    del config["audio_pad"]
    path.write_text(json.dumps(config))
    old = ImageBindEncoder.from_pretrained(tmp_path / "enc")
    assert old.config.audio_pad == "fbank"
    padded = old.prepare("audio", [burst])
    assert float(silence[0, 0, 0, :, 120:190].mean()) < float(padded[0, 0, 0, :, 120:190].mean()) - 1  # after the end
    path.write_text(json.dumps({**config, "audio_pad": "echo"}))
    with pytest.raises(CheckpointError, match="audio_pad"):
        ImageBindEncoder.from_pretrained(tmp_path / "enc")
