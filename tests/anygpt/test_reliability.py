"""Reliability and security: limits, safe loading, concurrency, the content filter."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygpt import AnyGPT, InputError
from anygpt.config import LimitSettings, SafetySettings


@contextlib.contextmanager
def _with_config(tiny, **update):
    """The loaded tiny model under another config (limits, safety): the parts are shared, so the
    session's model gets its own limits back afterwards."""
    app = AnyGPT(tiny.model, tiny.config.model_copy(update=update), trained=tiny.trained)
    app._decoders = tiny._decoders
    tiny.model.encoder.clear_cache()  # items cached under the old limits were checked under those
    try:
        yield app
    finally:
        AnyGPT(tiny.model, tiny.config, trained=tiny.trained)  # puts the encoder's limits back


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_ten_minute_audio_is_refused_fast_and_a_4k_image_is_downscaled(tiny, tmp_path):
    long_audio = tmp_path / "ten-minutes.wav"
    sf.write(long_audio, np.zeros(600 * 16000, np.int16), 16000, subtype="PCM_16")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"over the limit of 120(\.0)? s"):
        tiny.chat("what is this?", audio=long_audio, outputs=())
    assert time.perf_counter() - t0 < 5, "refused from the header, not after decoding ten minutes"

    image_4k = tmp_path / "4k.png"
    pixels = np.zeros((2160, 3840, 3), np.uint8)
    pixels[500:1500, 1000:2500] = (220, 30, 30)
    Image.fromarray(pixels).save(image_4k)
    before, t0 = _peak_rss_mb(), time.perf_counter()
    r = tiny.chat("what colour is the shape?", image=image_4k, outputs=(), max_new_tokens=8)
    assert r.text and time.perf_counter() - t0 < 60
    assert _peak_rss_mb() - before < 1024, "a 4K picture costs tens of MB, not gigabytes"

    with _with_config(tiny, limits=LimitSettings(max_pixels=1920 * 1080)) as strict:
        with pytest.raises(InputError, match="3840x2160 pixels, over the limit of 2073600"):
            strict.chat("what is this?", image=image_4k, outputs=())
    assert tiny.chat("what is this?", image=image_4k, outputs=(), max_new_tokens=2).text is not None


def test_request_limits_name_the_limit(tiny, media_dir):
    limits = LimitSettings(max_prompt_chars=50, max_steps=30, max_new_tokens=64, max_media_items=2)
    with _with_config(tiny, limits=limits) as app:
        with pytest.raises(InputError, match="over the limit of 50"):
            app.chat("x" * 51)
        with pytest.raises(InputError, match="num_inference_steps must be from 1 to 30"):
            app.chat("draw a red circle", num_inference_steps=31)
        with pytest.raises(InputError, match="max_new_tokens must be from 1 to 64"):
            app.chat("hello", max_new_tokens=65)
        with pytest.raises(InputError, match="3 media items in the conversation, over the limit of 2"):
            app.chat("what are these?", image=[media_dir / "red_square.png"] * 3)


class _RunsCode:
    """A pickle payload that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    from encoders import CheckpointError, ImageBindEncoder

    marker = tmp_path / "pwned"
    bad = tmp_path / "imagebind_huge.pth"
    torch.save({"weights": _RunsCode(marker)}, bad)
    with open(tmp_path / "plain.pkl", "wb") as f:  # the payload works when loaded the unsafe way
        pickle.dump(_RunsCode(tmp_path / "control"), f)
    with pytest.raises(CheckpointError):
        ImageBindEncoder.from_checkpoint(bad)
    assert not marker.exists()

    from anygpt.train.loop import LoopSettings, train

    module = torch.nn.Linear(2, 2)
    run = tmp_path / "run"
    train("t", module, lambda step: torch.ones(1, 2), lambda x: (module(x).sum(), {}), run,
          LoopSettings(steps=1, warmup=1))
    torch.save({"state": _RunsCode(marker)}, run / "checkpoint" / "optimizer.bin")  # Accelerate's optimizer file
    with pytest.raises(pickle.UnpicklingError):
        train("t", module, lambda step: torch.ones(1, 2), lambda x: (module(x).sum(), {}), run,
              LoopSettings(steps=2, warmup=1))
    assert not marker.exists()


def test_eight_concurrent_requests_equal_the_same_requests_alone(tiny):
    prompts = ["draw a red circle", "draw a blue square", "play a rising sweep", "animate a green triangle",
               "draw a yellow circle", "play a low tone", "draw a purple triangle", "What is the capital of France?"]
    force = [("image",), ("image",), ("audio",), ("video",), ("image",), ("audio",), ("image",), ()]
    # each request is held to its forced outputs (`outputs`), so the count of artifacts below does not
    # depend on what the LLM itself chooses ("animate a green triangle" names no direction, and the
    # shipped LLM reads it as a picture request)
    options = [dict(seed=10 + i, force=f, num_inference_steps=2, max_new_tokens=12, **({"outputs": f} if f else {}))
               for i, f in enumerate(force)]
    alone = [tiny.chat(p, **o) for p, o in zip(prompts, options)]
    together: dict[int, object] = {}
    errors = []

    def ask(i):
        try:
            together[i] = tiny.chat(prompts[i], **options[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and len(together) == 8
    # The same media up to float rounding: a request run alone starts from the KV cache of the one
    # before it (README, "Conversations run through the LLM once"), which moves the LLM's states by
    # about 1e-6 with what ran before, and so may move a pixel by one level; another request's
    # media would differ everywhere.
    for i, a in enumerate(alone):
        b = together[i]
        assert b.text == a.text and b.trace.signal_runs == a.trace.signal_runs
        assert len(a.artifacts) == len(b.artifacts) == len(force[i])
        for x, y in zip(a.artifacts, b.artifacts):
            if hasattr(x, "image"):
                diff = np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int))
            elif hasattr(x, "waveform"):
                diff = np.abs(x.waveform - y.waveform) * 255 / max(1e-6, float(np.abs(x.waveform).max()))
            else:
                diff = np.abs(x.frames.astype(int) - y.frames.astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.01, (prompts[i], diff.max(), diff.mean())


def test_content_filter_refuses_prompts_and_withholds_replies(tiny):
    with _with_config(tiny, safety=SafetySettings(enabled=True, blocked_words=["forbidden"])) as app:
        with pytest.raises(InputError, match="refused by the content filter.*'Forbidden'"):
            app.chat("draw a Forbidden thing")
        assert app.chat("draw a red circle", force=("image",), num_inference_steps=2).images  # others pass
        app.set_content_filter(lambda text: "no capitals today" if "Paris" in text else None)
        r = app.chat("What is the capital of France?", force=("image",), num_inference_steps=2)
        assert r.text == "[reply withheld by the content filter: no capitals today]" and r.artifacts == []
    assert tiny.content_filter is None  # off by default
