"""The toy world: a seeded, deterministic generator of captioned images, audio, video and depth.

No pretrained media models can be downloaded here, so the tiny preset learns its senses from
this world; and because the world is known, every output can be judged by plain signal
analysis (`anygpt.eval.probes`). The same seed always gives byte-identical files.

Each modality has a typed spec (`ImageSpec`, `AudioSpec`, `VideoSpec`, `DepthSpec`) drawn by
`sample_*(rng, split)`, drawn into an array by `render(spec)`, and described by
`caption(spec, rng, split)`. The `heldout` split uses caption templates and attribute
combinations (`HELDOUT`) that `train` never uses, so evaluation measures generalisation.

`make_dataset` writes a folder with a `manifest.jsonl` (path + caption per line: the format of
`anygpt.data.manifest`, which the training commands read for real data too) and `dataset.json`.
This module imports only third-party libraries: it knows nothing of any model.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Union

import av
import numpy as np
import soundfile as sf
from PIL import Image

GENERATOR_VERSION = "3"  # 2: the held-out sounds cover all eight kinds; 3: depth maps hold disparity in the encoder's units
SPLITS = ("train", "heldout")
MODALITIES = ("image", "audio", "video", "depth")

# ---------------------------------------------------------------- the world's vocabulary
SHAPES = ("circle", "square", "triangle")
# Saturated colours far apart in hue (0, 31, 57, 127, 227, 278 degrees), so hue alone tells them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (250, 130, 0),
    "yellow": (240, 230, 30),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "purple": (160, 60, 220),
}
DIRECTIONS = ("left", "right", "up", "down")  # image coordinates: "down" is towards the bottom row
DISTANCES = ("near", "far")
# Disparity ranges in ImageBind's units (pixels; the encoder clamps at 75, see encoders/README.md); the
# background is 0. A depth PNG holds these values as they are, so a map read from its file is the one rendered.
DISPARITY = {"near": (52.0, 75.0), "far": (11.0, 34.0)}
AUDIO_KINDS = ("low tone", "middle tone", "high tone", "rising sweep", "falling sweep",
               "noise burst", "pulsing beeps", "warbling tone")
PITCH_BANDS = {"low tone": (150.0, 300.0), "middle tone": (450.0, 900.0), "high tone": (1600.0, 3200.0)}  # Hz
LENGTHS = {"short": (1.0, 1.35), "long": (1.65, 2.0)}  # seconds; the gap lets a probe tell them apart
SAMPLE_RATE = 16000

# The categorical attributes of each modality: what captions name and what the probes report.
LABELS: dict[str, tuple[str, ...]] = {
    "image": ("color", "shape"),
    "audio": ("kind", "length"),
    "video": ("color", "shape", "direction"),
    "depth": ("shape", "distance"),
}
# The values each categorical attribute takes.
VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {"color": tuple(COLORS), "shape": SHAPES},
    "audio": {"kind": AUDIO_KINDS, "length": tuple(LENGTHS)},
    "video": {"color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTIONS},
    "depth": {"shape": SHAPES, "distance": DISTANCES},
}
# Attribute combinations that only the heldout split uses (keys in HELDOUT_KEYS order). Every
# single value still occurs in train; only these pairings are new at evaluation time.
HELDOUT_KEYS: dict[str, tuple[str, str]] = {
    "image": ("color", "shape"), "audio": ("kind", "length"),
    "video": ("color", "direction"), "depth": ("shape", "distance"),
}
HELDOUT: dict[str, frozenset[tuple[str, str]]] = {
    "image": frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("orange", "triangle")}),
    # one pairing per kind, so that the held-out sounds cover every kind (and both lengths)
    "audio": frozenset({("low tone", "short"), ("middle tone", "long"), ("high tone", "short"),
                        ("rising sweep", "long"), ("falling sweep", "short"), ("noise burst", "long"),
                        ("pulsing beeps", "short"), ("warbling tone", "long")}),
    "video": frozenset({("red", "up"), ("green", "left"), ("blue", "down"), ("yellow", "right")}),
    "depth": frozenset({("triangle", "near")}),
}

# Captions of things the world lacks (`anygpt.train.stages.caption_samples`, `anygpt.eval.benchmark.
# read_from_words`): sounds and colours the toy world does not have (no world kind or colour is among
# them, nor any word of one), so that no caption names a held-out pair of the world.
CAPTION_SOUNDS = ("whistle", "hum", "buzz", "chime", "drumbeat", "click", "roar", "hiss", "rattle", "gong",
                  "horn", "flute", "violin", "engine", "wind", "rain", "thunder", "birdsong", "bark", "meow",
                  "clap", "knock", "doorbell", "chirp", "growl", "squeak", "splash", "drip", "murmur", "howl",
                  "purr", "snap", "trumpet", "whisper", "cough", "laugh", "applause", "footstep", "alarm",
                  "heartbeat", "tick", "creak", "thud", "pop", "sigh", "scream", "whoosh", "clang", "jingle",
                  "rustle", "gurgle", "sneeze", "cheer", "song", "melody", "fanfare", "buzzer", "siren",
                  "bell", "chord", "drone", "rumble", "sizzle", "crackle")
CAPTION_COLOURS = ("pink", "white", "brown", "cyan", "grey", "black", "gold", "silver", "teal", "maroon",
                   "beige", "navy", "lime", "olive", "crimson", "turquoise")
SOUND_CAPTIONS = ("a {length} {kind}", "the {length} sound of a {kind}", "a {kind} that is {length}",
                   "a {length} {kind} sound", "{length} {kind}")
CLIP_CAPTIONS = ("a {color} {shape} moving {direction}", "a {color} {shape} that moves {direction}",
                  "a {shape} in {color} going {direction}")

# ---------------------------------------------------------------- captions
# Each slot is named after an attribute; values with several phrasings are listed in PHRASES.
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "direction": {
        "left": ("left", "to the left", "leftward"), "right": ("right", "to the right", "rightward"),
        "up": ("up", "upward", "upwards"), "down": ("down", "downward", "downwards"),
    },
    "distance": {
        "near": ("close to the camera", "near the viewer", "up close", "nearby"),
        "far": ("far from the camera", "far away", "in the distance", "far off"),
    },
    "length": {"short": ("short", "brief"), "long": ("long", "lengthy")},
    "kind": {
        "low tone": ("low tone", "low-pitched tone", "deep hum", "low steady note"),
        "middle tone": ("middle tone", "mid-pitched tone", "medium-pitched note", "steady tone in the middle range"),
        "high tone": ("high tone", "high-pitched tone", "shrill whistle", "high steady note"),
        "rising sweep": ("rising sweep", "tone that climbs in pitch", "upward sweep", "pitch rising from low to high"),
        "falling sweep": ("falling sweep", "tone that drops in pitch", "downward sweep", "pitch falling from high to low"),
        "noise burst": ("noise burst", "burst of static", "hiss of white noise", "rush of noise"),
        "pulsing beeps": ("series of pulsing beeps", "train of beeps", "beeping pattern", "sequence of repeated beeps"),
        "warbling tone": ("warbling tone", "wobbling pitch", "vibrato tone", "tone that wavers up and down"),
    },
}
CAPTION_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {
        "train": (
            "a {color} {shape}", "a {color} {shape} on a dark background", "a picture of a {color} {shape}",
            "an image of a {color} {shape}", "a {shape} coloured {color}", "a single {color} {shape}",
            "one {color} {shape} on a plain dark backdrop", "a {shape} in {color}",
            "a {color} {shape} against black", "a drawing of a {color} {shape}",
            "{color}, and shaped like a {shape}", "the shape is a {shape} and it is {color}",
        ),
        "heldout": (
            "a {shape} filled with {color}", "a lone {color} {shape} in the dark",
            "a simple graphic: a {color} {shape}", "{color} is the colour of this {shape}",
            "a photo showing a {color} {shape}",
        ),
    },
    "video": {
        "train": (
            "a {color} {shape} moving {direction}", "a {color} {shape} sliding {direction}",
            "a video of a {color} {shape} going {direction}", "a {shape} coloured {color} that moves {direction}",
            "a {color} {shape} drifting {direction} across the frame", "a clip of a {color} {shape} travelling {direction}",
            "a {color} {shape} glides {direction}", "{color} {shape}, moving {direction}",
            "an animation of a {color} {shape} heading {direction}",
            "a {color} {shape} on a dark background, moving {direction}",
        ),
        "heldout": (
            "a {color} {shape} that keeps going {direction}", "footage of a {shape} in {color} shifting {direction}",
            "watch the {color} {shape} travel {direction}", "a {color} {shape} making its way {direction}",
        ),
    },
    "audio": {
        "train": (
            "a {kind}", "the sound of a {kind}", "a {length} {kind}", "audio of a {kind}",
            "a recording of a {length} {kind}", "you can hear a {kind}", "a clip with a {kind}",
            "just a {kind}", "a {length} clip of a {kind}", "a synthetic {kind}",
        ),
        "heldout": (
            "this audio contains a {kind}", "listen: a {length} {kind}", "a sound clip featuring a {kind}",
            "one {length} {kind}",
        ),
    },
    "depth": {
        "train": (
            "a depth map of a {shape} {distance}", "a disparity map: a {shape} {distance}", "a {shape} {distance}",
            "depth of a {shape} {distance}", "a {shape} sitting {distance}", "a depth image showing a {shape} {distance}",
        ),
        "heldout": (
            "the depth of a {shape} placed {distance}", "a {shape} seen {distance}, as disparity",
            "disparity for a {shape} {distance}",
        ),
    },
}


# ---------------------------------------------------------------- specs
class _Spec:
    modality: ClassVar[str]

    def labels(self) -> dict[str, str]:
        """The categorical attributes (`LABELS`): what the caption names and the probe should find."""
        return {k: getattr(self, k) for k in LABELS[self.modality]}


@dataclass(frozen=True)
class ImageSpec(_Spec):
    """A shape on a plain dark background. Positions and sizes are fractions of the canvas side."""
    modality: ClassVar[str] = "image"
    shape: str
    color: str
    rgb: tuple[int, int, int]  # the palette colour with a little jitter
    cx: float
    cy: float
    size: float  # side of the shape's (square) bounding box
    background: int  # grey level
    canvas: int = 64


@dataclass(frozen=True)
class AudioSpec(_Spec):
    """One sound. Fields a kind does not use are 0: f1 is for sweeps, rate/depth for warbles, rate/duty for beeps."""
    modality: ClassVar[str] = "audio"
    kind: str
    length: str  # "short" | "long", the band `duration` was drawn from
    duration: float  # seconds
    amplitude: float  # peak
    f0: float  # Hz: the tone, the sweep's start, the warble's centre
    f1: float  # Hz: the sweep's end
    rate: float  # warble cycles or beeps per second
    duty: float  # fraction of each beep period that sounds
    depth: float  # warble depth, semitones either side
    fade: float  # seconds of fade-in and fade-out
    noise_seed: int  # makes the noise burst a pure function of the spec
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class VideoSpec(_Spec):
    """A shape moving at constant speed in a straight line, from (x0, y0) by `travel` along `direction`."""
    modality: ClassVar[str] = "video"
    shape: str
    color: str
    direction: str
    rgb: tuple[int, int, int]
    x0: float
    y0: float
    travel: float
    size: float
    background: int
    frames: int = 8
    fps: int = 8
    canvas: int = 64


@dataclass(frozen=True)
class DepthSpec(_Spec):
    """A shape at one disparity (near = high) on a zero background."""
    modality: ClassVar[str] = "depth"
    shape: str
    distance: str
    disparity: float
    cx: float
    cy: float
    size: float
    canvas: int = 64


Spec = Union[ImageSpec, AudioSpec, VideoSpec, DepthSpec]


# ---------------------------------------------------------------- sampling
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _pick_labels(rng: np.random.Generator, modality: str, split: str, fixed: dict[str, str | None]) -> dict[str, str]:
    """Draw the categorical attributes: a pair allowed in `split` (uniform), then the rest uniformly."""
    _check_split(split)
    values = VALUES[modality]
    for key, value in fixed.items():
        if value is not None and value not in values[key]:
            raise ValueError(f"unknown {modality} {key} {value!r}; expected one of {values[key]}")
    a, b = HELDOUT_KEYS[modality]
    pairs = [(x, y) for x in values[a] for y in values[b]
             if ((x, y) in HELDOUT[modality]) == (split == "heldout")
             and fixed.get(a) in (None, x) and fixed.get(b) in (None, y)]
    if not pairs:
        raise ValueError(f"no {modality} in split {split!r} has {a}={fixed.get(a)!r}, {b}={fixed.get(b)!r}")
    labels = dict(zip((a, b), pairs[rng.integers(len(pairs))]))
    for key in LABELS[modality]:
        if key not in labels:
            labels[key] = fixed.get(key) or values[key][rng.integers(len(values[key]))]
    return labels


def _u(rng: np.random.Generator, lo: float, hi: float, digits: int = 4) -> float:
    """A uniform draw, rounded so the manifest shows exactly the value that was rendered."""
    return round(float(rng.uniform(lo, hi)), digits)


def _jitter(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[color])


def _place(rng: np.random.Generator, size: float, margin: float = 0.04) -> tuple[float, float]:
    """A centre that keeps the whole shape, and a margin, inside the canvas (the probes read the border as background)."""
    lo, hi = size / 2 + margin, 1 - size / 2 - margin
    return _u(rng, lo, hi), _u(rng, lo, hi)


def sample_image(rng: np.random.Generator, split: str = "train", *, canvas: int = 64,
                 shape: str | None = None, color: str | None = None) -> ImageSpec:
    labels = _pick_labels(rng, "image", split, {"shape": shape, "color": color})
    size = _u(rng, 0.25, 0.6)
    cx, cy = _place(rng, size)
    return ImageSpec(labels["shape"], labels["color"], _jitter(rng, labels["color"]), cx, cy, size,
                     int(rng.integers(0, 41)), canvas)


def sample_audio(rng: np.random.Generator, split: str = "train", *, sample_rate: int = SAMPLE_RATE,
                 kind: str | None = None, length: str | None = None) -> AudioSpec:
    labels = _pick_labels(rng, "audio", split, {"kind": kind, "length": length})
    kind, length = labels["kind"], labels["length"]
    duration = _u(rng, *LENGTHS[length], digits=3)
    f0 = f1 = rate = duty = depth = 0.0
    if kind in PITCH_BANDS:
        lo, hi = PITCH_BANDS[kind]
        f0 = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 1)
    elif kind in ("rising sweep", "falling sweep"):
        f0, f1 = _u(rng, 250, 500, 1), _u(rng, 1800, 3600, 1)
        if kind == "falling sweep":
            f0, f1 = f1, f0
    elif kind == "warbling tone":
        f0, rate, depth = _u(rng, 500, 1400, 1), _u(rng, 4, 8, 2), _u(rng, 1.5, 3.0, 2)
    elif kind == "pulsing beeps":
        f0, rate, duty = _u(rng, 600, 1500, 1), _u(rng, 3, 7, 2), _u(rng, 0.4, 0.6, 2)
    return AudioSpec(kind, length, duration, _u(rng, 0.3, 0.8, 3), f0, f1, rate, duty, depth,
                     _u(rng, 0.01, 0.03, 3), int(rng.integers(2**31)), sample_rate)


# Sounds of kinds the world does not have, each at either length (`sample_novel_audio`). In the training
# split every world kind comes in one length only, so an encoder can read a sound's length from its kind;
# on these the kind says nothing of the length (README, "Sounds the world does not have").
# Each is several steady lines at once, which no world kind is (a world sound is one line or noise).
NOVEL_SOUNDS = ("chord", "bell", "organ note")
NOVEL_PARTIALS = {"chord": (1.0, 1.26, 1.5), "bell": (1.0, 2.76, 5.4), "organ note": (1.0, 2.0, 4.0)}
# More kinds the world does not have, closer to its own: one line (or one band of noise) each, as a world
# sound is, but none of the world's kinds: a slow wide siren (a warble is fast and narrow), a call of two
# notes, a tone whose loudness trembles (beeps go silent between), hiss in one narrow band; steady tones
# below and above the world's pitch bands (drone, squeal) and noise below and above most of a noise
# burst's (rumble, sizzle), so that steady tones and noises, too, come in both lengths; and a crackle,
# clicks at random times, each across the whole band as white noise is, but no steady noise.
NOVEL_LINES = ("siren", "two-note call", "tremolo tone", "noise band", "drone", "squeal", "rumble", "sizzle",
               "crackle")


def sample_novel_audio(rng: np.random.Generator, *, kinds: tuple[str, ...] = NOVEL_SOUNDS,
                       sample_rate: int = SAMPLE_RATE) -> AudioSpec:
    """A sound of one of `kinds` (of `NOVEL_SOUNDS` and `NOVEL_LINES`) at either length. A `NOVEL_SOUNDS`
    kind is its partials (`NOVEL_PARTIALS`, ratios to a base of 250-600 Hz), steady, for the whole sound."""
    unknown = set(kinds) - set(NOVEL_SOUNDS + NOVEL_LINES)
    if unknown or not kinds:
        raise ValueError(f"novel kinds must be some of {NOVEL_SOUNDS + NOVEL_LINES}, got {sorted(unknown) or kinds}")
    kind = kinds[rng.integers(len(kinds))]
    length = tuple(LENGTHS)[rng.integers(len(LENGTHS))]
    duration = _u(rng, *LENGTHS[length], digits=3)
    # drawn in this order first, as before the line kinds were added, so that seeded sets stay the same
    amplitude, f0, fade, seed = _u(rng, 0.3, 0.8, 3), _u(rng, 250, 600, 1), _u(rng, 0.01, 0.03, 3), int(rng.integers(2**31))
    f1, rate, depth = 0.0, 0.0, 0.0
    if kind == "siren":  # up and down between f0 and f1, 0.8-1.6 times a second
        f0 = _u(rng, 300, 800, 1)
        f1, rate = round(f0 * _u(rng, 1.6, 2.0, 2), 1), _u(rng, 0.8, 1.6, 2)
    elif kind == "two-note call":  # f0 for the first half, f1 for the second
        f0 = _u(rng, 300, 1500, 1)
        f1 = round(f0 * _u(rng, 1.3, 1.6, 2), 1)
    elif kind == "tremolo tone":  # loudness dips by `depth` (a fraction), `rate` times a second
        f0, rate, depth = _u(rng, 300, 2000, 1), _u(rng, 9, 14, 2), _u(rng, 0.5, 0.7, 2)
    elif kind == "noise band":  # noise between f0 and f1
        f0 = _u(rng, 800, 2500, 1)
        f1 = round(f0 * 1.4, 1)
    elif kind == "drone":  # a steady tone below the low tones' 150-300 Hz
        f0 = _u(rng, 50, 110, 1)
    elif kind == "squeal":  # a steady tone above the high tones' 1600-3200 Hz
        f0 = _u(rng, 5000, 7000, 1)
    elif kind == "rumble":
        f0, f1 = 40.0, _u(rng, 300, 450, 1)
    elif kind == "sizzle":
        f0, f1 = _u(rng, 4000, 5000, 1), 7900.0
    elif kind == "crackle":  # `rate` clicks a second
        rate = _u(rng, 20, 60, 1)
    return AudioSpec(kind, length, duration, amplitude, f0, f1, rate, 0.0, depth, fade, seed, sample_rate)


def novel_sounds(n: int, seed: int, kinds: tuple[str, ...] = NOVEL_SOUNDS) -> list[dict]:
    """n sounds of kinds the world does not have (some of `NOVEL_SOUNDS` and `NOVEL_LINES`), at either
    length (`sample_novel_audio`), as manifest-like items holding their waves ("array"), their
    `AudioSpec` ("spec") and training-split captions."""
    rng = np.random.default_rng([seed, 2])
    items = []
    for _ in range(n):
        spec = sample_novel_audio(rng, kinds=tuple(kinds))
        items.append({"modality": "audio", "array": render(spec), "attributes": spec.labels(),
                      "caption": caption(spec, rng), "spec": spec})
    return items


def sample_video(rng: np.random.Generator, split: str = "train", *, canvas: int = 64, frames: int = 8,
                 shape: str | None = None, color: str | None = None, direction: str | None = None) -> VideoSpec:
    if canvas % 2 or frames < 2:
        raise ValueError(f"video needs an even canvas and at least 2 frames, got {canvas}, {frames}")
    labels = _pick_labels(rng, "video", split, {"shape": shape, "color": color, "direction": direction})
    size, margin = _u(rng, 0.2, 0.35), 0.04
    room = 1 - size - 2 * margin  # how far the centre can move along one axis
    travel = _u(rng, 0.3, min(0.55, room))
    along = _u(rng, size / 2 + margin, size / 2 + margin + room - travel)  # start, as if moving right/down
    across = _u(rng, size / 2 + margin, 1 - size / 2 - margin)
    if labels["direction"] in ("left", "up"):
        along = round(1 - along, 4)
    x0, y0 = (along, across) if labels["direction"] in ("left", "right") else (across, along)
    return VideoSpec(labels["shape"], labels["color"], labels["direction"], _jitter(rng, labels["color"]),
                     x0, y0, travel, size, int(rng.integers(0, 41)), frames, 8, canvas)


def sample_depth(rng: np.random.Generator, split: str = "train", *, canvas: int = 64,
                 shape: str | None = None, distance: str | None = None) -> DepthSpec:
    labels = _pick_labels(rng, "depth", split, {"shape": shape, "distance": distance})
    size = _u(rng, 0.3, 0.6) if labels["distance"] == "near" else _u(rng, 0.2, 0.45)  # near things look bigger
    cx, cy = _place(rng, size)
    return DepthSpec(labels["shape"], labels["distance"], _u(rng, *DISPARITY[labels["distance"]], 2), cx, cy, size, canvas)


def sample(modality: str, rng: np.random.Generator, split: str = "train", **kwargs) -> Spec:
    """`sample_<modality>(rng, split, **kwargs)`."""
    samplers = {"image": sample_image, "audio": sample_audio, "video": sample_video, "depth": sample_depth}
    if modality not in samplers:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return samplers[modality](rng, split, **kwargs)


# ---------------------------------------------------------------- rendering
def shape_coverage(shape: str, cx: float, cy: float, size: float, canvas: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel the shape covers, float32 [canvas, canvas] (supersampled, so edges are anti-aliased).

    Every shape fills a square bounding box of side `size` centred on (cx, cy); the triangle points up.
    """
    n = canvas * supersample
    c = (np.arange(n, dtype=np.float64) + 0.5) / n
    x, y = c[None, :], c[:, None]
    half = size / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half ** 2
    elif shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        inside = (y <= cy + half) & (np.abs(x - cx) <= (y - (cy - half)) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.reshape(canvas, supersample, canvas, supersample).mean(axis=(1, 3)).astype(np.float32)


def _paint(coverage: np.ndarray, rgb: tuple[int, int, int], background: int) -> np.ndarray:
    a = coverage[..., None]
    out = background * (1 - a) + np.asarray(rgb, np.float32) * a
    return np.round(out).astype(np.uint8)


def render_image(spec: ImageSpec) -> np.ndarray:
    """uint8 [H, W, 3]."""
    return _paint(shape_coverage(spec.shape, spec.cx, spec.cy, spec.size, spec.canvas), spec.rgb, spec.background)


def render_video(spec: VideoSpec) -> np.ndarray:
    """uint8 [F, H, W, 3]: the shape's centre moves by travel * i / (F - 1) along the direction."""
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.direction]
    frames = []
    for i in range(spec.frames):
        step = spec.travel * i / (spec.frames - 1)
        cov = shape_coverage(spec.shape, spec.x0 + dx * step, spec.y0 + dy * step, spec.size, spec.canvas)
        frames.append(_paint(cov, spec.rgb, spec.background))
    return np.stack(frames)


def render_depth(spec: DepthSpec) -> np.ndarray:
    """float32 [H, W] disparity (see DISPARITY), rounded to whole units as its 16-bit PNG holds it."""
    return np.round(shape_coverage(spec.shape, spec.cx, spec.cy, spec.size, spec.canvas) * np.float32(spec.disparity))


def render_audio(spec: AudioSpec) -> np.ndarray:
    """float32 [T] mono in [-1, 1] at spec.sample_rate."""
    sr, d = spec.sample_rate, spec.duration
    t = np.arange(int(round(d * sr))) / sr
    if spec.kind in ("noise burst", "noise band", "rumble", "sizzle"):
        x = np.random.default_rng(spec.noise_seed).standard_normal(len(t))
        if spec.kind != "noise burst":
            bins = np.fft.rfftfreq(len(t), 1 / sr)
            x = np.fft.irfft(np.fft.rfft(x) * ((bins >= spec.f0) & (bins <= spec.f1)), len(t))
        x /= np.abs(x).max()
    elif spec.kind == "crackle":  # clicks of 1-3 samples at random times, random signs and sizes
        clicks = np.random.default_rng(spec.noise_seed)
        x = np.zeros(len(t))
        at = clicks.integers(0, len(t), max(1, int(spec.rate * d)))
        for width in (1, 2, 3):
            x[np.minimum(at + width - 1, len(t) - 1)] += clicks.uniform(-1, 1, len(at)) / width
        x /= np.abs(x).max()
    elif spec.kind in NOVEL_PARTIALS:
        x = sum(np.sin(2 * np.pi * spec.f0 * r * t) for r in NOVEL_PARTIALS[spec.kind]) / len(NOVEL_PARTIALS[spec.kind])
    else:
        if spec.kind in ("rising sweep", "falling sweep"):
            freq = spec.f0 * (spec.f1 / spec.f0) ** (t / d)  # exponential: constant octaves per second
        elif spec.kind == "warbling tone":
            freq = spec.f0 * 2 ** (spec.depth / 12 * np.sin(2 * np.pi * spec.rate * t))
        elif spec.kind == "siren":
            up = 1 - np.abs(2 * ((spec.rate * t) % 1) - 1)  # 0 -> 1 -> 0 each cycle
            freq = spec.f0 * (spec.f1 / spec.f0) ** up
        elif spec.kind == "two-note call":
            freq = np.where(t < d / 2, spec.f0, spec.f1)
        else:
            freq = np.full_like(t, spec.f0)
        x = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    if spec.kind == "tremolo tone":
        x = x * (1 - spec.depth * (0.5 + 0.5 * np.sin(2 * np.pi * spec.rate * t)))
    if spec.kind == "pulsing beeps":
        # n beeps, the first starting at 0 and the last ending at d, each with 5 ms ramps (no clicks)
        n = max(3, int(round(spec.rate * d)))
        period = d / (n - 1 + spec.duty)
        on = spec.duty * period
        tm = t % period
        x = x * np.clip(np.minimum(tm, on - tm) / 0.005, 0, 1)
    env = np.clip(np.minimum(t, d - t) / spec.fade, 0, 1)
    return (spec.amplitude * env * x).astype(np.float32)


def spec_from_attributes(modality: str, attributes: dict) -> Spec:
    """The spec a manifest line's `attributes` came from (JSON turned tuples into lists), e.g. to re-render it."""
    classes = {"image": ImageSpec, "audio": AudioSpec, "video": VideoSpec, "depth": DepthSpec}
    return classes[modality](**{k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()})


def render(spec: Spec) -> np.ndarray:
    """The spec's array: image uint8 [H,W,3], audio float32 [T], video uint8 [F,H,W,3], depth float32 [H,W]."""
    renderers = {ImageSpec: render_image, AudioSpec: render_audio, VideoSpec: render_video, DepthSpec: render_depth}
    return renderers[type(spec)](spec)


def caption(spec: Spec, rng: np.random.Generator, split: str = "train") -> str:
    """A description of the spec, worded by a template of the split (heldout wordings never occur in train);
    a value without phrasings (e.g. a `NOVEL_SOUNDS` kind) is its own word."""
    _check_split(split)
    templates = CAPTION_TEMPLATES[spec.modality][split]
    template = templates[rng.integers(len(templates))]
    words = {}
    for key, value in spec.labels().items():  # draw for every slot, used or not, so rng use is fixed
        choices = PHRASES.get(key, {}).get(value, (value,))
        words[key] = choices[rng.integers(len(choices))]
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", template.format(**words))


def wordings(modality: str, labels: dict[str, str], split: str = "heldout",
             keys: tuple[str, ...] | None = None) -> list[str]:
    """Every caption of the split that names all of `labels`: each template with a slot for every
    attribute, in every phrasing of the values (a class's prompt ensemble for retrieval; some audio
    templates leave the length out, and two classes worded alike cannot be told apart). With `keys`,
    the templates that name exactly those attributes instead ("a {kind}" for ("kind",))."""
    keys = LABELS[modality] if keys is None else tuple(keys)
    choices = [PHRASES.get(k, {}).get(labels[k], (labels[k],)) for k in keys]
    out = []
    for template in CAPTION_TEMPLATES[modality][split]:
        if {k for k in LABELS[modality] if "{" + k + "}" in template} == set(keys):
            for words in itertools.product(*choices):
                out.append(re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", template.format(**dict(zip(keys, words)))))
    return out


# ---------------------------------------------------------------- files
def save_image(path: str | Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb, "RGB").save(path)


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def save_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 [T] mono, sample rate); stereo files are averaged."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def save_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """H.264 yuv420p MP4, like real video data (lossy: the probes are tested on the decoded frames)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def load_video(path: str | Path) -> np.ndarray:
    """uint8 [F, H, W, 3]."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def save_depth(path: str | Path, disparity: np.ndarray) -> None:
    """16-bit grayscale PNG whose values are the disparity (rounded), as the encoder reads a depth PNG."""
    Image.fromarray(np.round(np.clip(disparity, 0, 65535)).astype(np.uint16)).save(path)


def load_depth(path: str | Path) -> np.ndarray:
    """float32 [H, W] disparity, the values of a 16-bit or 8-bit grayscale PNG as they are."""
    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1) if a.dtype == np.uint8 else a[..., 0]
    return a.astype(np.float32)


def load(modality: str, path: str | Path) -> np.ndarray:
    """The array a file holds, as `render` gives it (audio: the samples only; use load_audio for the rate)."""
    if modality == "audio":
        return load_audio(path)[0]
    loaders = {"image": load_image, "video": load_video, "depth": load_depth}
    if modality not in loaders:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return loaders[modality](path)


_FILES = {"image": ("images", ".png"), "audio": ("audio", ".wav"), "video": ("video", ".mp4"), "depth": ("depth", ".png")}


def _save(spec: Spec, data: np.ndarray, path: Path) -> None:
    if isinstance(spec, ImageSpec):
        save_image(path, data)
    elif isinstance(spec, AudioSpec):
        save_audio(path, data, spec.sample_rate)
    elif isinstance(spec, VideoSpec):
        save_video(path, data, spec.fps)
    else:
        save_depth(path, data)


def example_rng(seed: int, split: str, modality: str, index: int) -> np.random.Generator:
    """The generator for one example: independent of how many others are made, so a bigger set extends a smaller one."""
    return np.random.default_rng([seed, SPLITS.index(split), MODALITIES.index(modality), index])


def make_dataset(out_dir: str | Path, *, n_per_modality: dict[str, int] | int, seed: int, split: str = "train",
                 image_size: int = 64, video_frames: int = 8, sample_rate: int = SAMPLE_RATE,
                 overwrite: bool = False) -> Path:
    """Write a toy-world dataset folder and return its manifest path.

    Layout: images/*.png, audio/*.wav (16-bit PCM), video/*.mp4 (H.264), depth/*.png (16-bit),
    manifest.jsonl (one example a line, paths relative to the folder) and dataset.json (version,
    seed, split, counts). A folder that already holds a manifest is refused unless `overwrite`
    (which also deletes the media files an earlier run wrote there, so none are left unlisted).
    """
    _check_split(split)
    counts = dict.fromkeys(MODALITIES, n_per_modality) if isinstance(n_per_modality, int) else dict(n_per_modality)
    unknown = set(counts) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected some of {MODALITIES}")
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"counts must be non-negative integers, got {counts}")
    out = Path(out_dir)
    manifest = out / "manifest.jsonl"
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset; pass overwrite=True to replace it")
    for folder, ext in _FILES.values():
        for old in (out / folder).glob(f"[0-9][0-9][0-9][0-9][0-9][0-9]{ext}"):
            old.unlink()
    options = {"image": {"canvas": image_size}, "audio": {"sample_rate": sample_rate},
               "video": {"canvas": image_size, "frames": video_frames}, "depth": {"canvas": image_size}}
    lines = []
    for modality in MODALITIES:
        n = counts.get(modality, 0)
        if n == 0:
            continue
        folder, ext = _FILES[modality]
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = example_rng(seed, split, modality, i)
            spec = sample(modality, rng, split, **options[modality])
            rel = f"{folder}/{i:06d}{ext}"
            _save(spec, render(spec), out / rel)
            lines.append({"id": f"{modality}-{i:06d}", "modality": modality, "path": rel,
                          "caption": caption(spec, rng, split), "attributes": asdict(spec),
                          "split": split, "seed": seed})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = {"generator": "anygpt.toyworld", "version": GENERATOR_VERSION, "seed": seed, "split": split,
            "counts": {m: counts.get(m, 0) for m in MODALITIES}, "image_size": image_size,
            "video_frames": video_frames, "sample_rate": sample_rate,
            "heldout": {m: {"keys": list(HELDOUT_KEYS[m]), "combos": sorted(map(list, HELDOUT[m]))} for m in MODALITIES}}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return manifest


def toyworld_main(out: str | Path, n: int = 100, seed: int = 0, split: str = "train") -> Path:
    """The `anygpt toyworld` command: write `n` examples of each modality to `out`; prints and returns the manifest."""
    manifest = make_dataset(out, n_per_modality=n, seed=seed, split=split)
    print(f"wrote {n} examples per modality ({', '.join(MODALITIES)}), split {split!r}, seed {seed}: {manifest}")
    return manifest
