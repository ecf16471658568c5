"""Fuzzing every input reader and the script and config parsers with hypothesis.

Each reader gets random bytes, truncated and bit-flipped valid files, wrong magic numbers and
huge headers, and must end in the project's own error (or succeed): never another exception, a
hang (each example has a deadline; a watchdog stops the process on a real hang) or unbounded
memory (the readers check sizes from headers before they allocate).

`make test` runs a bounded budget (ANYGPT_FUZZ_EXAMPLES per target, 40 by default, about a minute
in all); to fuzz longer: `ANYGPT_FUZZ_EXAMPLES=5000 make test ARGS="tests/fuzz"`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anygpt.config import AnyGPTConfig
from anygpt.errors import AnyGPTError
from encoders import ImageBindEncoder, MediaError

EXAMPLES = int(os.environ.get("ANYGPT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize="ANYGPT_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
WATCHDOG_S = 60 + EXAMPLES * 3


@pytest.fixture(autouse=True)
def watchdog():
    """A hang is a failure: SIGALRM ends the test instead of letting it run forever."""
    def fire(signum, frame):
        raise TimeoutError(f"a fuzz target ran over {WATCHDOG_S} s: a reader hangs")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(WATCHDOG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def encoder():
    return ImageBindEncoder.tiny(seed=0)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(8000) / 5.0), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _mp4(tmp_dir) -> bytes:
    import av

    path = os.path.join(tmp_dir, "v.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(8):
            frame = np.full((32, 32, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return open(path, "rb").read()


def _huge_png(width: int, height: int) -> bytes:
    """A PNG header claiming a gigantic image, with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _mutations(valid: bytes):
    """Truncations, bit flips, wrong magic, and plain noise, around a valid file."""
    n = len(valid)
    return st.one_of(
        st.integers(0, n - 1).map(lambda k: valid[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=8).map(
            lambda flips: bytes(b ^ dict(flips).get(i, 0) for i, b in enumerate(valid))),
        st.binary(min_size=1, max_size=8).map(lambda magic: magic + valid[len(magic):]),
        st.binary(max_size=2048),
    )


def _check(encoder, modality: str, data: bytes) -> None:
    try:
        encoder.prepare(modality, [data])
    except MediaError:
        pass  # the project's clear error: what bad input must get


@FUZZ
@given(data=_mutations(_png()))
def test_image_reader(encoder, data):
    _check(encoder, "image", data)


@FUZZ
@given(data=_mutations(_png()))
def test_depth_reader(encoder, data):
    _check(encoder, "depth", data)


@FUZZ
@given(data=_mutations(_wav()))
def test_audio_reader(encoder, data):
    _check(encoder, "audio", data)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return _mp4(str(tmp_path_factory.mktemp("fuzz")))


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=6),
       magic=st.binary(max_size=4))
def test_video_reader(encoder, mp4, cut, flips, magic):
    data = bytearray(mp4[:max(1, int(len(mp4) * cut))] if cut < 0.95 else mp4)
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] ^= value
    data[:len(magic)] = magic
    _check(encoder, "video", bytes(data))


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_huge_image_headers_are_refused_before_decoding(encoder, width, height):
    _check(encoder, "image", _huge_png(width, height))


@FUZZ
@given(text=st.one_of(
    st.text(max_size=400),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                     st.sampled_from(["jobs", "defaults", "vars", "id", "prompt", "inputs", "outputs", "seed",
                                      "options", "x"]), inner, max_size=4), max_leaves=20).map(json.dumps),
))
def test_script_parser(tmp_path_factory, text):
    from apps.batch import ScriptError, load_script

    folder = tmp_path_factory.mktemp("script")
    for suffix in (".yaml", ".jsonl"):
        path = folder / f"s{suffix}"
        path.write_text(text)
        try:
            load_script(path)
        except ScriptError:
            pass


@FUZZ
@given(data=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                             st.sampled_from(["name", "llm", "encoder", "decoders", "image", "path", "package",
                                              "conditioning", "signal_tokens", "limits", "safety", "lora"]),
                             inner, max_size=5), max_leaves=25))
def test_config_parser(data):
    try:
        AnyGPTConfig.parse(data)
    except AnyGPTError:
        pass
