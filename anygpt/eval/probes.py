"""Probes: judge toy-world media by plain signal analysis, knowing nothing of any model.

Each probe maps an array to the toy world's categorical attributes (`toyworld.LABELS`), so
evaluation can ask "does the generated image show a red circle?" without trusting a learned
classifier. They are built to survive what small diffusion models and lossy files do to a
signal (noise, blur, compression), and answer "unknown" when there is nothing to judge.

    probe_image(rgb)            -> {"color", "shape"}
    probe_video(frames)         -> {"color", "shape", "direction"}
    probe_depth(disparity)      -> {"shape", "distance"}
    probe_audio(wave, rate)     -> {"kind", "length"}
    probe_text(text, modality)  -> the attributes a caption or reply names
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from anygpt.data.toyworld import COLORS, DISPARITY, LABELS, LENGTHS, PITCH_BANDS

UNKNOWN = "unknown"


# ---------------------------------------------------------------- pixels: segment, colour, shape
@dataclass
class _Blob:
    """The one foreground object of a picture."""
    mask: np.ndarray  # bool [H, W]
    cx: float  # centroid, fraction of width
    cy: float
    color: str
    shape: str


def _hue(rgb: np.ndarray) -> float:
    """Hue in degrees of one RGB colour (0 for greys)."""
    r, g, b = (float(v) for v in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    if hi - lo < 1e-6:
        return 0.0
    if hi == r:
        h = (g - b) / (hi - lo)
    elif hi == g:
        h = 2 + (b - r) / (hi - lo)
    else:
        h = 4 + (r - g) / (hi - lo)
    return (60 * h) % 360


_PALETTE_HUES = {name: _hue(np.array(rgb)) for name, rgb in COLORS.items()}


def _color_name(rgb: np.ndarray) -> str:
    """The palette colour nearest in hue: hue survives the dimming, desaturation and tints of generated images.
    A grey (chroma under 25 of 255) has no meaningful hue: "unknown", never a lucky guess."""
    if np.max(rgb) - np.min(rgb) < 25:
        return UNKNOWN
    h = _hue(rgb)
    return min(_PALETTE_HUES, key=lambda name: min(abs(h - _PALETTE_HUES[name]), 360 - abs(h - _PALETTE_HUES[name])))


def _otsu(values: np.ndarray) -> float:
    """The threshold that best splits the values into two classes (Otsu's method, 256 bins)."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _smooth_mask(mask: np.ndarray) -> np.ndarray:
    """Keep pixels with at least 4 of their 3x3 neighbourhood set: removes speckle and fills pinholes, yet keeps
    straight edges and square corners (a strict 5-of-9 majority rounds small squares into circles)."""
    p = np.pad(mask, 1).astype(np.uint8)
    h, w = mask.shape
    return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) >= 4


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (each the smallest flat index in its component; background = mask.size),
    by label propagation with pointer jumping: numpy only, a few dozen rounds even for large images."""
    h, w = mask.shape
    n = h * w
    flat = mask.ravel()
    labels = np.where(flat, np.arange(n), n)
    while True:
        grid = np.pad(labels.reshape(h, w), 1, constant_values=n)
        new = np.minimum.reduce([grid[1:-1, 1:-1], grid[:-2, 1:-1], grid[2:, 1:-1], grid[1:-1, :-2], grid[1:-1, 2:]]).ravel()
        new = np.where(flat, new, n)
        for _ in range(4):  # jump to the label's own label: shortcuts long chains
            new = np.append(new, n)[new]
        if np.array_equal(new, labels):
            return labels.reshape(h, w)
        labels = new


def _object_mask(mask: np.ndarray) -> np.ndarray:
    """The largest region of `mask`, with its holes filled (noise punches holes that would lower its fill)."""
    labels = _components(mask)
    counts = np.bincount(labels.ravel(), minlength=mask.size + 1)[:-1]
    region = labels == np.argmax(counts)
    ys, xs = np.nonzero(region)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    outside = _components(np.pad(~region[box], 1, constant_values=True))  # what reaches the border is background
    region[box] = (outside != outside[0, 0])[1:-1, 1:-1]
    return region


# A shape's signature: fill of its bounding box, and its mean width (relative to the box) in the top
# quarter, middle half and bottom quarter of the box. Band means, not single rows, so noise and blur
# at small sizes move them little; top vs bottom tells a triangle from a circle even when blurred.
_BANDS = ((0.0, 0.25), (0.25, 0.75), (0.75, 1.0))


def _signature(fill: float, width) -> np.ndarray:
    """`width(t)`: the shape's relative width at relative height t (0 = top)."""
    t = [np.linspace(lo, hi, 101) for lo, hi in _BANDS]
    return np.array([fill] + [float(np.mean(width(b))) for b in t])


_SHAPE_SIGNATURES = [
    ("circle", _signature(np.pi / 4, lambda t: 2 * np.sqrt(t * (1 - t)))),
    ("square", _signature(1.0, np.ones_like)),
    ("triangle", _signature(0.5, lambda t: t)),  # pointing up, as the toy world draws it
    ("triangle", _signature(0.5, lambda t: 1 - t)),  # pointing down: still a triangle
]


def _shape_name(mask: np.ndarray) -> str:
    """The shape whose signature is nearest: fill tells circle (0.785) / square (1) / triangle (0.5) apart,
    the width profile backs it up when blur rounds corners and noise eats edges."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape
    widths, centres = box.sum(axis=1) / w, (np.arange(h) + 0.5) / h
    bands = [widths[(centres >= lo) & (centres <= hi)] for lo, hi in _BANDS]
    sig = np.array([box.mean()] + [b.mean() if len(b) else np.interp((lo + hi) / 2, centres, widths)
                                    for b, (lo, hi) in zip(bands, _BANDS)])
    return min(_SHAPE_SIGNATURES, key=lambda s: float(np.sum((sig - s[1]) ** 2)))[0]


def _find_blob(pixels: np.ndarray, min_contrast: float) -> _Blob | None:
    """Segment the one object in `pixels` (float [H, W, C], 0..255) from a background read off the border."""
    h, w, _ = pixels.shape
    border = lambda a: np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    contrast = np.linalg.norm(pixels - np.median(border(pixels), axis=0), axis=-1)
    if contrast.max() < min_contrast:
        return None
    threshold = max(_otsu(contrast), min_contrast / 2)
    mask = contrast > threshold
    if mask.sum() < max(4, 0.002 * h * w):
        return None
    if np.median(border(contrast)) > 0.1 * threshold:  # a noisy background: smooth the mask first
        mask = _smooth_mask(mask)
    mask = _object_mask(mask)
    if mask.sum() < max(4, 0.002 * h * w) or np.median(contrast[mask]) < min_contrast:
        return None
    ys, xs = np.nonzero(mask)
    # the colour from the interior (edges are blended with the background), the median resisting noise
    m = np.pad(mask, 1)
    core = mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    inner = core if core.sum() >= 10 else mask
    color = _color_name(np.median(pixels[inner], axis=0)) if pixels.shape[-1] == 3 else UNKNOWN
    return _Blob(mask, (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, color, _shape_name(mask))


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {a.shape}")
    a = a[..., :3].astype(np.float32)
    return a * 255 if np.issubdtype(np.asarray(rgb).dtype, np.floating) and a.max() <= 1.0 else a


def probe_image(rgb: np.ndarray) -> dict[str, str]:
    """Colour and shape of the one object in an image (uint8 [H, W, 3], or float in [0, 1]); "unknown" if none."""
    blob = _find_blob(_as_rgb(rgb), min_contrast=40)
    return {"color": blob.color, "shape": blob.shape} if blob else {"color": UNKNOWN, "shape": UNKNOWN}


def probe_video(frames: np.ndarray) -> dict[str, str]:
    """Colour, shape (majority over frames) and dominant motion of the object's centroid across [F, H, W, 3] frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected video frames [F, H, W, 3], got shape {frames.shape}")
    found = [(i, b) for i, b in enumerate(_find_blob(_as_rgb(f), min_contrast=40) for f in frames) if b]
    if len(found) < 2:
        return {"color": UNKNOWN, "shape": UNKNOWN, "direction": UNKNOWN}
    t = np.array([i for i, _ in found]) / (len(frames) - 1)
    blobs = [b for _, b in found]
    # least-squares displacement over the whole clip: one bad frame cannot flip it
    dx = np.polyfit(t, [b.cx for b in blobs], 1)[0]
    dy = np.polyfit(t, [b.cy for b in blobs], 1)[0]
    if max(abs(dx), abs(dy)) < 0.05:
        direction = "none"
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    vote = lambda key: Counter(getattr(b, key) for b in blobs).most_common(1)[0][0]
    return {"color": vote("color"), "shape": vote("shape"), "direction": direction}


_NEAR_FAR = (DISPARITY["far"][1] + DISPARITY["near"][0]) / 2


def probe_depth(disparity: np.ndarray) -> dict[str, str]:
    """Shape and distance (near = high disparity) of the object in a disparity map [H, W] (or
    [H, W, C], first channel), in the toy world's units (see DISPARITY), any dtype."""
    d = np.asarray(disparity)
    if d.ndim == 3:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"expected a disparity map [H, W], got shape {d.shape}")
    d = d.astype(np.float32)
    blob = _find_blob(d[..., None] * (255 / DISPARITY["near"][1]), min_contrast=20)
    if not blob:
        return {"shape": UNKNOWN, "distance": UNKNOWN}
    return {"shape": blob.shape, "distance": "near" if np.median(d[blob.mask]) > _NEAR_FAR else "far"}


# ---------------------------------------------------------------- audio
_LOW_MID, _MID_HIGH = (np.sqrt(PITCH_BANDS["low tone"][1] * PITCH_BANDS["middle tone"][0]),
                       np.sqrt(PITCH_BANDS["middle tone"][1] * PITCH_BANDS["high tone"][0]))
_SHORT_LONG = (LENGTHS["short"][1] + LENGTHS["long"][0]) / 2
_TONAL = 1.4  # log10 peak/median power: white noise 0.9-1.0; a tone 1.7 at -5 dB SNR, 2.2 at 0 dB, 11+ clean


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def probe_audio(wave: np.ndarray, sample_rate: int) -> dict[str, str]:
    """Kind and length of a sound, from a short-time spectrum (25 ms frames, 10 ms hop, at any sample rate).

    In order: silence → "unknown"; no spectral peak → noise burst; several separate runs of a loud
    peak → pulsing beeps; peak frequency moving by more than an octave → rising/falling sweep; peak frequency
    wobbling → warbling tone; else a steady tone, classed low/middle/high by its median frequency.
    Length is the span from the first to the last frame above a quarter of the peak level, split at 1.5 s.
    """
    x = np.asarray(wave, dtype=np.float64)
    if np.issubdtype(np.asarray(wave).dtype, np.integer):
        x = x / np.iinfo(np.asarray(wave).dtype).max
    if x.ndim == 2:  # [T, channels] or [channels, T]
        x = x.mean(axis=int(np.argmin(x.shape)))
    unknown = {"kind": UNKNOWN, "length": UNKNOWN}
    frame, hop = int(round(0.025 * sample_rate)), int(round(0.010 * sample_rate))
    if x.ndim != 1 or len(x) < frame or np.abs(x).max() < 1e-4:
        return unknown
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    n_fft = 1 << int(np.ceil(np.log2(4 * frame)))  # zero-padded: finer peak positions
    power = np.abs(np.fft.rfft(frames * np.hanning(frame), n_fft)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    band = (freqs >= 50) & (freqs <= min(7500, sample_rate / 2))
    power, freqs = power[:, band], freqs[band]

    active = np.flatnonzero(rms > 0.25 * rms.max())
    span = (active[-1] - active[0]) * hop + frame
    length = "long" if span / sample_rate > _SHORT_LONG else "short"
    # Tonality: how far the strongest bin stands above the median bin (a flatness measure that, unlike
    # geometric/arithmetic mean, stays low for a tone buried in as much broadband noise as it has energy).
    tonality = np.log10((power.max(axis=1) + 1e-20) / (np.median(power, axis=1) + 1e-20))
    if np.percentile(tonality[active], 75) < _TONAL:  # the upper quartile: gaps between beeps do not count
        return {"kind": "noise burst", "length": length}
    # The tone's own strength per frame gates beeps; broadband noise barely moves it.
    peak = power.max(axis=1)
    loud = peak > 0.25 * peak.max()
    runs = [r for r in _runs(loud[active[0]:active[-1] + 1]) if r[1] - r[0] >= 2]
    if len(runs) >= 3:
        return {"kind": "pulsing beeps", "length": length}
    p = power[loud] + 1e-20

    # peak-frequency track over the loud frames, refined by a parabola through the peak's neighbours
    k = np.clip(np.argmax(p, axis=1), 1, p.shape[1] - 2)
    rows = np.arange(len(k))
    a, b, c = (np.log(p[rows, k + o]) for o in (-1, 0, 1))
    offset = np.clip(0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) < 1e-12, 1e-12, a - 2 * b + c), -0.5, 0.5)
    octaves = np.log2(np.interp(k + offset, np.arange(len(freqs)), freqs))
    t = np.flatnonzero(loud) * hop / sample_rate
    if len(t) >= 3:
        slope, intercept = np.polyfit(t, octaves, 1)
        change = slope * (t[-1] - t[0])
        if abs(change) > 1.0:
            return {"kind": "rising sweep" if change > 0 else "falling sweep", "length": length}
        if np.std(octaves - (slope * t + intercept)) > 0.04:
            return {"kind": "warbling tone", "length": length}
    f = 2 ** np.median(octaves)
    kind = "low tone" if f < _LOW_MID else "middle tone" if f < _MID_HIGH else "high tone"
    return {"kind": kind, "length": length}


def pitch_track(wave: np.ndarray, sample_rate: int, step: float = 0.1) -> list[tuple[float, float | None]]:
    """(time s, peak frequency Hz) every `step` seconds over the sound: the strongest bin of a 50-ms
    Hann window, None where the window is below a tenth of the loudest's level. For describing a
    sample in words ("a tone falling from 2.1 kHz to 600 Hz"), not for judging it (`probe_audio`)."""
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"pitch_track takes a mono wave [T], got shape {list(x.shape)}")
    frame, hop = int(0.05 * sample_rate), int(step * sample_rate)
    if len(x) < frame:
        return []
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    rms = np.sqrt((frames ** 2).mean(axis=1))
    n_fft = 1 << int(np.ceil(np.log2(4 * frame)))
    peaks = np.fft.rfftfreq(n_fft, 1 / sample_rate)[np.abs(np.fft.rfft(frames * np.hanning(frame), n_fft)).argmax(1)]
    loud = rms > 0.1 * max(rms.max(), 1e-12)
    return [(round(i * step, 2), round(float(f)) if on else None) for i, (f, on) in enumerate(zip(peaks, loud))]


# ---------------------------------------------------------------- text
# Words that name each attribute value, for captions and for free-text replies ("a round red thing").
_WORDS: dict[str, dict[str, str]] = {
    "color": {**{c: c for c in COLORS}, "purple": "purple|violet"},
    "shape": {"circle": "circles?|circular|round|discs?|disks?|balls?|dots?", "square": "squares?|box|boxes",
              "triangle": "triangles?|triangular"},
    "direction": {"left": "left|leftwards?", "right": "right|rightwards?", "up": "up|upwards?", "down": "down|downwards?"},
    "distance": {"near": "near|nearby|close|closer", "far": "far|distant|distance|away"},
    "length": {"short": "short|brief", "long": "long|lengthy"},
    "kind": {
        "noise burst": "noise|static|hiss|hissing", "pulsing beeps": "beeps?|beeping|pulsing|pulses",
        "warbling tone": r"warbl\w*|wobbl\w*|vibrato|waver\w*", "rising sweep": r"rising|rises|climb\w*|upward|ascending",
        "falling sweep": r"falling|falls|drops?|dropping|downward|descending",
        "low tone": "low|deep|bass", "middle tone": "middle|mid|medium", "high tone": "high|shrill",
    },
}


def probe_text(text: str, modality: str) -> dict[str, str | None]:
    """The attribute values a text names for `modality` (`toyworld.LABELS`), None where it names none.

    Where a text names several values of one attribute, the first mentioned wins
    ("a tone rising from low to high" is a rising sweep, not a low tone).
    """
    if modality not in LABELS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(LABELS)}")
    found = {}
    for key in LABELS[modality]:
        hits = [(m.start(), value) for value, pattern in _WORDS[key].items()
                if (m := re.search(rf"\b(?:{pattern})\b", text, re.IGNORECASE))]
        found[key] = min(hits)[1] if hits else None
    return found
