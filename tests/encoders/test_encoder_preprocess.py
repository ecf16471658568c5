"""Our preprocessing equals ImageBind's data.py on generated files (to 1e-5), and every
input type of one picture / sound / clip gives the same tensor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from encoder_media import decode_frames, pattern_image, png_bytes, tone
from PIL import Image

from _imagebind_reference import reference_data_module, soundfile_load
from encoders.preprocess import (
    load_and_transform_audio,
    load_and_transform_depth,
    load_and_transform_image,
    load_and_transform_imu,
    load_and_transform_thermal,
    load_and_transform_video,
)


@pytest.fixture(scope="module")
def reference():
    return reference_data_module()


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["landscape.png", "portrait.jpg", "small_rgba.png", "gray.png"])
def test_image_matches_reference(reference, media_dir, name):
    path = str(media_dir / name)
    assert_close(load_and_transform_image(path), reference.load_and_transform_vision_data([path], "cpu")[0])


@pytest.mark.parametrize("name", ["mono16k.wav", "stereo44k.wav", "short16k.wav", "long22k.wav"])
def test_audio_matches_reference(reference, media_dir, monkeypatch, name):
    monkeypatch.setattr(torchaudio, "load", soundfile_load)  # torchaudio 2.11 needs torchcodec to load
    path = str(media_dir / name)
    ours = load_and_transform_audio(path)
    assert ours.shape == (3, 1, 128, 204)
    assert_close(ours, reference.load_and_transform_audio_data([path], "cpu")[0])


@pytest.mark.parametrize("name", ["landscape12fps.mp4", "portrait8fps.mp4", "odd25fps.mp4"])
def test_video_matches_reference(reference, media_dir, name):
    path = str(media_dir / name)
    ours = load_and_transform_video(path)
    assert ours.shape == (15, 3, 2, 224, 224)
    assert_close(ours, reference.load_and_transform_video_data([path], "cpu")[0])


def test_text_tokens_match_reference(reference, encoder):
    texts = ["a red circle on a white background", "A dog barks!", ""]
    assert torch.equal(encoder.tokenize(texts), reference.load_and_transform_text(texts, "cpu"))


def test_image_input_types_agree(media_dir):
    path = media_dir / "landscape.png"
    pixels = np.array(Image.open(path).convert("RGB"))
    want = load_and_transform_image(str(path))
    for item in [path, path.read_bytes(), Image.open(path), pixels, torch.from_numpy(pixels).permute(2, 0, 1),
                 pixels.astype(np.float32) / 255, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255]:
        assert torch.equal(load_and_transform_image(item), want), type(item)


def test_audio_input_types_agree(media_dir):
    path = media_dir / "mono16k.wav"
    want = load_and_transform_audio(path)
    pcm, _ = soundfile.read(path, dtype="int16")  # the samples the file holds
    for item in [str(path), path.read_bytes(), pcm, torch.from_numpy(pcm), pcm.astype(np.float32) / 32768]:
        assert (load_and_transform_audio(item) - want).abs().max() <= 1e-5, type(item)


def test_silence_padding_shows_where_a_noise_burst_ends():
    """data.py pads a short clip's log-mel frames with 0, as loud as white noise in every bin: a 1.2-s
    and a 1.8-s burst then differ only in their fades. Padded with silence, the frames after the end
    sit at Kaldi's floor, the level of a bin no sound reaches."""
    rng = np.random.default_rng(0)
    short, long = (rng.uniform(-0.5, 0.5, int(s * 16_000)).astype(np.float32) for s in (1.2, 1.8))
    fbank = [load_and_transform_audio(x)[0, 0] for x in (short, long)]
    silence = [load_and_transform_audio(x, pad="silence")[0, 0] for x in (short, long)]
    floor = (np.log(np.finfo(np.float32).eps) - -4.268) / 9.138  # an all-zero frame, normalised
    between = slice(125, 175)  # after the short burst's end, before the long one's
    assert abs(float(fbank[0][:, between].mean() - fbank[1][:, between].mean())) < 0.15  # alike
    assert abs(float(silence[0][:, between].mean()) - floor) < 0.01
    assert float(silence[1][:, between].mean()) > floor + 1
    assert torch.allclose(silence[1][:, :100], fbank[1][:, :100], atol=1e-4)  # the sound itself: as data.py reads it
    assert silence[0].shape == fbank[0].shape == (128, 204)
    with pytest.raises(ValueError, match="pad"):
        load_and_transform_audio(short, pad="zeros")


def test_audio_from_video_container(media_dir, tmp_path):
    """Audio inside an MP4 (AAC) is read through PyAV."""
    import av

    path = tmp_path / "with_sound.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16_000)
        s.layout = "mono"
        wave = tone(2.5, 16_000)[:, 0]
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16_000
            c.mux(s.encode(frame))
        c.mux(s.encode())
    out = load_and_transform_audio(path)
    assert out.shape == (3, 1, 128, 204) and torch.isfinite(out).all()


def test_video_array_equals_file(media_dir):
    """A frame array is taken at 8 fps: the decoded frames of an 8 fps file give the same tensor."""
    path = media_dir / "portrait8fps.mp4"
    frames = decode_frames(path)
    want = load_and_transform_video(path)
    assert torch.equal(load_and_transform_video(frames), want)
    assert torch.equal(load_and_transform_video(torch.from_numpy(frames).permute(0, 3, 1, 2)), want)
    assert torch.equal(load_and_transform_video(path.read_bytes()), want)


def test_thermal():
    gray = pattern_image(120, 90, 4)[..., 0]
    out = load_and_transform_thermal(gray)
    assert out.shape == (1, 224, 224) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(load_and_transform_thermal(png_bytes(gray)), out)
    assert torch.equal(load_and_transform_thermal(Image.fromarray(gray).convert("RGB")), out)


def test_depth(tmp_path):
    flat = load_and_transform_depth(np.full((48, 64), 30.0, np.float32))
    assert flat.shape == (1, 224, 224)
    assert torch.allclose(flat, torch.full_like(flat, (30 / 75 - 0.0418) / 0.0295), atol=1e-4)
    disparity = np.linspace(1, 60, 80 * 100, dtype=np.float32).reshape(80, 100)
    np.save(tmp_path / "d.npy", disparity)
    Image.fromarray(disparity.astype(np.uint16)).save(tmp_path / "d16.png")
    from_npy = load_and_transform_depth(tmp_path / "d.npy")
    assert torch.equal(from_npy, load_and_transform_depth(torch.from_numpy(disparity)))
    from_png = load_and_transform_depth(tmp_path / "d16.png")  # 16-bit values taken as they are
    assert torch.equal(from_png, load_and_transform_depth(disparity.astype(np.uint16)))


def test_imu(tmp_path):
    rng = np.random.default_rng(0)
    long = rng.normal(size=(6, 2600)).astype(np.float32)
    assert torch.equal(load_and_transform_imu(long), torch.from_numpy(long[:, 300:2300]))  # the middle
    assert torch.equal(load_and_transform_imu(long.T.copy()), torch.from_numpy(long[:, 300:2300]))  # [T, 6]
    short = load_and_transform_imu(long[:, :500])
    assert short.shape == (6, 2000) and torch.equal(short[:, :500], torch.from_numpy(long[:, :500]))
    assert short[:, 500:].abs().sum() == 0
    buf = io.BytesIO()
    np.save(buf, long)
    assert torch.equal(load_and_transform_imu(buf.getvalue()), load_and_transform_imu(long))


def test_an_audio_window_is_that_part_of_the_sound_at_16k_and_silence_past_its_end(media_dir):
    from encoders.preprocess import audio_window

    path = media_dir / "stereo44k.wav"  # 2.5 s, 2 channels, 44.1 kHz
    whole, rate = soundfile.read(path, dtype="float32", always_2d=True)
    whole = torchaudio.functional.resample(torch.from_numpy(whole.T.copy()), rate, 16_000)
    part = audio_window(str(path), 1.5, None)
    assert part.dtype == np.float32 and part.shape == (2, whole.shape[1] - 24_000)
    assert np.allclose(part, whole[:, 24_000:].numpy(), atol=1e-6)
    assert audio_window(str(path), 0.5, 1.0).shape == (2, 8_000)
    past = audio_window(str(path), 3.0, None)  # nothing left: 25 ms of silence
    assert past.shape == (2, 400) and not past.any()
    # an array window reads back as the same samples (arrays are taken at 16 kHz)
    assert np.array_equal(audio_window(part, 0.25, None), part[:, 4_000:])
    with pytest.raises(ValueError, match="0 <= start < end"):
        audio_window(str(path), 1.0, 0.5)


def test_a_loudness_window_is_a_1khz_tone_as_loud_as_the_sound_there_and_the_same_for_any_sound():
    """`audio_loudness`: two sounds of the same loudness and length read the same whatever they are;
    the tone's RMS is the sound's; past the sound's end it is silence."""
    from encoders.preprocess import audio_loudness

    t = np.arange(32_000) / 16_000
    low, noise = 0.5 * np.sin(2 * np.pi * 220 * t), np.random.default_rng(0).uniform(-1, 1, t.size)
    noise *= np.sqrt((low ** 2).mean() / (noise ** 2).mean())  # the same RMS as the tone
    a, b = (audio_loudness(x[None].astype(np.float32), 1.5, None) for x in (low, noise))
    assert a.shape == b.shape == (1, 8_000) and a.dtype == np.float32
    rms = lambda x: float(np.sqrt((x ** 2).mean()))
    assert abs(rms(a) - rms(low[24_000:])) < 0.02 and abs(rms(a) - rms(b)) < 0.03
    spectrum = np.abs(np.fft.rfft(a[0]))
    assert abs(np.fft.rfftfreq(a.shape[1], 1 / 16_000)[spectrum.argmax()] - 1000) < 5  # carried on 1 kHz
    half = np.concatenate([low[:28_000], np.zeros(4_000)])[None].astype(np.float32)  # quiet from 1.75 s
    c = audio_loudness(half, 1.5, None)
    assert rms(c[:, :3_800]) > 0.3 and rms(c[:, 4_200:]) == 0
    assert not audio_loudness(low[None, :20_000].astype(np.float32), 1.5, None).any()  # over: silence

@pytest.mark.parametrize("name,fps", [("portrait8fps.mp4", 8), ("landscape12fps.mp4", 12)])
def test_a_grey_video_is_the_mean_of_the_colours_at_8_fps(media_dir, name, fps):
    from encoders.preprocess import grey_video

    frames = decode_frames(media_dir / name)  # what the file decodes to, [T, H, W, 3]
    grey = grey_video(str(media_dir / name))
    picks = [int(k * fps / 8) for k in range(round(len(frames) / fps * 8))]
    assert grey.dtype == np.uint8 and grey.shape == (len(picks),) + frames.shape[1:]
    want = frames[picks].astype(np.float32).mean(-1).round()
    assert np.array_equal(grey[..., 0], want) and (grey == grey[..., :1]).all()
    # an array is read at 8 fps as it is, and its grey copy is its own
    assert np.array_equal(grey_video(frames[:4]), frames[:4].astype(np.float32).mean(-1, keepdims=True).round().repeat(3, -1))
    assert np.array_equal(grey_video(grey), grey)
    from encoders.errors import MediaError
    with pytest.raises(MediaError, match="uint8"):
        grey_video(np.zeros((4, 8, 8, 3), np.float32))
