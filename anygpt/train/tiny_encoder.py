"""Train the tiny ImageBind on the toy world: every modality bound to its caption.

ImageBind binds each modality to images; the toy world has no photographs, so here each
modality is bound to the text of its caption instead (the text branch trains too). The
loss is a symmetric InfoNCE with several positives: two items whose attributes are the
same (two red circles) count as matches, so a batch never pushes apart equal things.

Each item is also bound to one attribute at a time ("a red shape", "a circle", "a shape
moving left"), with every item sharing that value as a positive. Whole captions alone let
the model learn one point per seen combination, which fails on the held-out combinations;
attribute views make the embedding compositional.

A view also sees copies of part of the batch changed in what it does not name, so each attribute
is recognised whatever the others are: grey images and clips for shape and direction (otherwise
the encoder reads direction from colour on the held-out colour-direction pairs); for sounds, copies
cut shorter than any length class for their kind, and copies flattened across frequency for their
length. In the toy world's training split each kind comes in one length only, so without them the
encoder reads kind from length and length from kind. Depth maps likewise: copies whose object stands
at a disparity between the near and far ranges for shape, and copies with the object redrawn as a bar or an
ellipse at its disparity (the distance stays, the shape goes) for distance (every training triangle is far, and the
held-out pair is a near triangle). No change makes a held-out pair: a cut copy is neither short nor
long, a flattened sound has no kind, a levelled map is neither near nor far, a redrawn one is no
toy-world shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anygpt.config import resolve_path
from anygpt.data.manifest import read_manifest
from anygpt.data import toyworld as tw
from anygpt.data.toyworld import DISPARITY, LABELS, novel_sounds
from anygpt.train.loop import LoopSettings, console, train
from encoders import ImageBindEncoder
from encoders.imagebind import MODEL_KEYS
from encoders.preprocess import AUDIO_PADS, DEPTH_MAX_DISPARITY, DEPTH_MEAN, DEPTH_STD

MODALITIES = ("image", "audio", "video", "depth")

# The novel sounds' kinds of the recipe (`--novel-audio`): every novel kind but crackle, which read
# worse beside the others (README, "Sounds the world does not have").
RECIPE_NOVEL_KINDS = tw.NOVEL_SOUNDS + tuple(k for k in tw.NOVEL_LINES if k != "crackle")


# One phrase per attribute value, for the attribute views.
ATTRIBUTE_VIEWS = {
    "image": {"color": "a {} shape", "shape": "a {}"},
    "audio": {"kind": "a {}", "length": "a {} sound"},
    "video": {"color": "a {} shape moving", "shape": "a moving {}", "direction": "a shape moving {}"},
    "depth": {"shape": "a depth map of a {}", "distance": "a shape {}"},
}


def grey(x: torch.Tensor) -> torch.Tensor:
    """The mean of the colour channels in all three ([..., 3, T, H, W] or [..., 3, H, W] inputs)."""
    channels = -4 if x.dim() >= 5 else -3
    return x.mean(channels, keepdim=True).expand_as(x)


FBANK_FRAMES_PER_SECOND = 100  # ImageBind's audio fbank: 10-ms frame shift
# Sounds cut short end within this range (seconds): below every length class of the toy world, so a
# cut copy is never a held-out kind-length pair (that would leak them into training).
CUT_SECONDS = (0.4, 0.95)


def cut_short(x: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
    """Audio fbanks [N, clips, 1, mel, time] with the sound ended after `seconds` [N] (or sooner if it
    is shorter); the rest becomes padding. Toy sounds are under 2.04 s, so the last frame is padding.
    With silence padding (`audio_pad`) the last frame is data.py's padding still (a 2-s clip makes 198
    of the 204 frames): the sound is taken to run to frame 198 and the cut ends in that level, not in
    silence. The shipped audio tower was trained so (README, "Padding with silence")."""
    pad = x[..., -1:]
    padded = (x == pad).all(-2)  # [N, clips, 1, time]
    sound = x.shape[-1] - padded.flip(-1).int().cumprod(-1).sum(-1, keepdim=True)
    end = torch.minimum(sound, (seconds * FBANK_FRAMES_PER_SECOND).long().view(-1, 1, 1, 1))
    kept = torch.arange(x.shape[-1]) < end  # [N, clips, 1, time]
    return torch.where(kept.unsqueeze(-2), x, pad)


def flatten_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Audio fbanks with every frame's energy spread evenly over the mel bins: the envelope (and so the
    length) stays, the kind (which bins, how they move) goes."""
    return x.mean(-2, keepdim=True).expand_as(x)


# A disparity between the far and near ranges: a map levelled to it is neither near nor far.
LEVEL_DISPARITY = (DISPARITY["far"][1] + DISPARITY["near"][0]) / 2


def level_depth(x: torch.Tensor) -> torch.Tensor:
    """Preprocessed depth maps [N, 1, H, W] with the object (everything above the background, the
    map's lowest value) moved to `LEVEL_DISPARITY`, edges scaled alike: the outline stays, the
    distance goes."""
    background = x.amin((-2, -1), keepdim=True)
    cover = (x - background) / (x.amax((-2, -1), keepdim=True) - background).clamp_min(1e-6)
    level = (LEVEL_DISPARITY / DEPTH_MAX_DISPARITY - DEPTH_MEAN) / DEPTH_STD
    return background + cover * (level - background)


def reshape_object(x: torch.Tensor, rng: np.random.Generator, supersample: int = 2) -> torch.Tensor:
    """Each map [N, 1, H, W] with its object redrawn as a bar or an ellipse (sides 1 : 0.3-0.6, any
    angle), about as large and at the same disparity: the distance stays, the shape goes and is none
    of the toy world's. The depth stem sees a map's level only at the object's edges (a patch inside
    it is a constant, which the stem's LayerNorm cancels), so the new edges run every way."""
    n, _, h, w = x.shape
    background = x.amin((-2, -1), keepdim=True)
    level = x.amax((-2, -1), keepdim=True)
    inside = x > background + 0.5 * (level - background)
    ys = (torch.arange(h * supersample, dtype=torch.float32) + 0.5) / (h * supersample)
    xs = (torch.arange(w * supersample, dtype=torch.float32) + 0.5) / (w * supersample)
    out = []
    for i in range(n):
        rows, cols = inside[i, 0].nonzero(as_tuple=True)
        cy, cx = (rows.float().mean() + 0.5) / h, (cols.float().mean() + 0.5) / w
        extent = max(float(rows.max() - rows.min() + 1) / h, float(cols.max() - cols.min() + 1) / w) / 2
        a, b = extent, extent * rng.uniform(0.3, 0.6)
        angle = rng.uniform(0, np.pi)
        u = (xs[None, :] - cx) * np.cos(angle) + (ys[:, None] - cy) * np.sin(angle)
        v = -(xs[None, :] - cx) * np.sin(angle) + (ys[:, None] - cy) * np.cos(angle)
        shape = (u / a) ** 2 + (v / b) ** 2 <= 1 if rng.random() < 0.5 else (u.abs() <= a) & (v.abs() <= b)
        out.append(shape.float().view(h, supersample, w, supersample).mean((1, 3)))
    cover = torch.stack(out)[:, None]
    return background + cover * (level - background)


# For each view, a change to the item that keeps what the view names (applied to part of a batch).
VIEW_CHANGES = {
    "image": {"shape": "grey"},
    "video": {"shape": "grey", "direction": "grey"},
    "audio": {"kind": "cut", "length": "flat"},
    "depth": {"shape": "level", "distance": "reshape"},
}


# For each view, the change whose copies have lost what the view names: a cut sound has no length, a
# flattened one no kind. Copies of the whole batch so changed are pushed to be equally near every
# value's phrase of that view (`neutral_loss`), so that what is left in them (a kind's content, an
# envelope's end) says nothing of the attribute: otherwise the encoder reads a held-out sound's length
# from its kind, which in the training split comes in one length only (README, "Where the audio
# length goes wrong").
NEUTRAL_CHANGES = {
    "audio": {"length": "cut", "kind": "flat"},
}


def neutral_loss(media: torch.Tensor, phrases: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Cross-entropy of each item's similarities to the phrases [V, D] against the uniform distribution."""
    logits = F.normalize(media, dim=-1) @ F.normalize(phrases, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.full_like(logits, 1 / len(phrases)))


def changed(name: str, x: torch.Tensor, rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """`x` with the change `name` applied to the chosen rows."""
    if name == "grey":
        new = grey(x)
    elif name == "cut":
        new = cut_short(x, torch.from_numpy(rng.uniform(*CUT_SECONDS, len(x))).float())
    elif name == "flat":
        new = flatten_spectrum(x)
    elif name == "level":
        new = level_depth(x)
    elif name == "reshape":
        new = reshape_object(x, rng)
    else:
        raise ValueError(f"unknown view change {name!r}")
    return torch.where(torch.from_numpy(rows).view(-1, *[1] * (x.dim() - 1)), new, x)


@dataclass
class Pool:
    """One modality's training items, preprocessed once (float16 to halve the memory)."""

    inputs: torch.Tensor
    tokens: torch.Tensor  # caption token ids [N, 77]
    labels: torch.Tensor  # attribute class per item [N]
    views: dict[str, tuple[torch.Tensor, torch.Tensor]]  # attribute -> (phrase tokens [N, 77], value index [N])
    phrases: dict[str, torch.Tensor]  # attribute -> every value's phrase tokens [V, 77], in value-index order
    lengths: torch.Tensor | None = None  # audio: each item's length (index into toyworld.LENGTHS), told or not


def label_of(example: dict) -> str:
    attrs = example["attributes"]
    return "|".join(str(attrs[k]) for k in LABELS[example["modality"]])


# The words that say a sound's length in the toy world's captions (toyworld.PHRASES["length"]).
LENGTH_WORDS = re.compile(r"\b(?:" + "|".join(w for ws in tw.PHRASES["length"].values() for w in ws) + r") ")


def without_length(caption: str) -> str:
    """A caption with its length words taken out ("a brief upward sweep" -> "an upward sweep")."""
    text = LENGTH_WORDS.sub("", caption)
    return re.sub(r"\b([Aa])n? (?=(\w))", lambda m: m.group(1) + ("n " if m.group(2)[0] in "aeiou" else " "), text)


def build_pools(encoder: ImageBindEncoder, examples: list[dict], per_modality: int,
                extra: Sequence[dict] = (), modalities: Sequence[str] = MODALITIES,
                length_from_extra: bool = False) -> dict[str, Pool]:
    """Each modality's first `per_modality` examples, and the `extra` items (beyond that count).
    `length_from_extra`: the world's sounds are not told their length (their captions lose its words,
    their length view is skipped, value index -1); only the `extra` sounds, whose kinds come at
    both lengths, teach it (README, "A sound's length, taught only by sounds that come at both lengths")."""
    pools = {}
    for m in modalities:
        world = [e for e in examples if e["modality"] == m][:per_modality]
        if length_from_extra and m == "audio":
            world = [{**e, "caption": without_length(e["caption"]), "length_untold": True} for e in world]
        rows = world + [e for e in extra if e["modality"] == m]
        if not rows:
            continue
        console.print(f"preparing {len(rows)} {m} items")
        chunks = []
        for i in range(0, len(rows), 32):
            x = encoder.prepare(m, [r["path"] if "path" in r else r["array"] for r in rows[i:i + 32]])
            if m == "video":  # square frames: ImageBind's 3 spatial crops are identical, keep one per clip
                x = x[:, ::3]
            chunks.append(x.half())
        names = sorted({label_of(r) for r in rows})
        views, phrases = {}, {}
        for key, phrase in ATTRIBUTE_VIEWS[m].items():
            values = [str(r["attributes"][key]) for r in rows]
            order = sorted(set(values))
            index = [-1 if key == "length" and r.get("length_untold") else order.index(v) for r, v in zip(rows, values)]
            views[key] = (encoder.tokenize([phrase.format(v) for v in values]), torch.tensor(index))
            phrases[key] = encoder.tokenize([phrase.format(v) for v in order])
        lengths = torch.tensor([list(tw.LENGTHS).index(r["attributes"]["length"]) for r in rows]) if m == "audio" else None
        pools[m] = Pool(torch.cat(chunks), encoder.tokenize([r["caption"] for r in rows]),
                        torch.tensor([names.index(label_of(r)) for r in rows]), views, phrases, lengths)
    return pools


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with equal labels is a positive."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    positives = (labels[:, None] == labels[None, :]).float()
    target = positives / positives.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def tower_parameters(encoder: ImageBindEncoder, modalities: Sequence[str]) -> list[str]:
    """Names of the parameters that embed only the given modalities: their preprocessors, trunks,
    heads and postprocessors (image and video share the vision tower)."""
    keys = {MODEL_KEYS[m] for m in modalities}
    return [n for n, _ in encoder.model.named_parameters() if n.split(".")[1] in keys]


def train_tiny_encoder(data: str | Path, out: str | Path, *, steps: int = 300, batch_size: int = 16,
                       per_modality: int = 400, lr: float = 1e-3, seed: int = 0, max_steps: int | None = None,
                       attribute_weight: float = 3.0, change_fraction: float = 0.5, neutral_weight: float = 0.0,
                       novel_audio: int = 0, novel_kinds: tuple[str, ...] = RECIPE_NOVEL_KINDS,
                       init: str | None = None, modalities: Sequence[str] = MODALITIES, audio_pad: str | None = None,
                       fresh_towers: bool = False, length_from_novel: bool = False,
                       length_words_weight: float = 0.0, device: str = "auto") -> dict:
    """Train from a toy-world manifest; writes `out/encoder` (save_pretrained) and returns the summary.
    `change_fraction` of each batch is shown changed to the views (see VIEW_CHANGES); `neutral_weight`
    weighs the pull of copies that lost an attribute toward none of its values (NEUTRAL_CHANGES; off by
    default: it read length better and kind worse, README "Where the audio length goes wrong").
    `novel_audio` sounds of kinds the world does not have, at both lengths, join the audio items
    (`novel_sounds`, of `novel_kinds`; README, "Sounds the world does not have").
    `init` (a saved encoder folder, e.g. anygpt:tiny/encoder) fine-tunes that encoder: only the towers
    of `modalities` train, against its frozen text tower, so every other modality's embeddings stay as
    they are and what reads them (the LLM's input projector) needs no retraining. `fresh_towers`
    starts those towers anew (seeded) instead of from `init`'s weights, against its text tower.
    `length_from_novel`: a sound's length is taught by the novel sounds alone (`build_pools`).
    `length_words_weight` (with `init`, whose text tower stays frozen): every sound, world or novel, is
    pulled to the margin at which captions of sounds the world lacks say their length, along a fixed
    reader fitted on those captions (`anygpt.eval.benchmark.word_reader`): a squared pull to one margin
    leaves a kind no room to push its training length further (README, "Lengths and directions learnt
    from words")."""
    modalities = tuple(modalities)
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ValueError(f"modalities {list(modalities)}: expected some of {MODALITIES}")
    if length_words_weight and init is None:
        raise ValueError("length_words_weight needs an init encoder (its frozen text tower fits the reader)")
    if fresh_towers and init is None:
        raise ValueError("fresh_towers needs an init encoder (whose other towers stay)")
    torch.manual_seed(seed)
    if init is None:
        encoder = ImageBindEncoder.tiny(seed=seed)
    else:
        encoder = ImageBindEncoder.from_pretrained(resolve_path(init), dtype=torch.float32)
        encoder.model.requires_grad_(False)
        fresh = ImageBindEncoder.tiny(seed=seed).model if fresh_towers else None
        for name in tower_parameters(encoder, modalities):
            if fresh is not None:
                encoder.model.get_parameter(name).data.copy_(fresh.get_parameter(name))
            encoder.model.get_parameter(name).requires_grad_(True)
    if audio_pad is not None:  # how the audio tower's input is padded from now on (README, "Padding with silence")
        if audio_pad not in AUDIO_PADS:
            raise ValueError(f"audio_pad must be one of {AUDIO_PADS}, got {audio_pad!r}")
        encoder.config.audio_pad = audio_pad
    pools = build_pools(encoder, read_manifest(data, check_files=True), per_modality,
                        novel_sounds(novel_audio if "audio" in modalities else 0, seed, novel_kinds), modalities,
                        length_from_extra=length_from_novel)

    reader = None
    if length_words_weight and "audio" in pools:
        from anygpt.eval.benchmark import word_captions, word_reader

        def encode_text(texts):
            with torch.no_grad():
                return encoder("text", encoder.tokenize(texts))

        w, b = word_reader(encode_text, "audio")
        words = F.normalize(encode_text(word_captions("audio")[0]).float(), dim=-1) @ w + b
        reader = (w, b, float((words[:, 1] - words[:, 0]).abs().mean()))
        console.print(f"length reader fitted on words: margin {reader[2]:.2f}")

    def batch_fn(step: int) -> dict[str, tuple[torch.Tensor, ...]]:
        rng = np.random.default_rng([seed, step])
        batch = {}
        for m, pool in pools.items():
            idx = torch.from_numpy(rng.choice(len(pool.labels), size=min(batch_size, len(pool.labels)), replace=False))
            views = {k: (t[idx], y[idx]) for k, (t, y) in pool.views.items()}
            x = pool.inputs[idx].float()
            changes = {name: changed(name, x, rng.random(len(idx)) < change_fraction, rng)
                       for name in sorted(set(VIEW_CHANGES.get(m, {}).values()))} if change_fraction else {}
            every = np.ones(len(idx), dtype=bool)
            neutral = {key: changed(name, x, every, rng) for key, name in NEUTRAL_CHANGES.get(m, {}).items()
                       if key in pool.phrases} if neutral_weight else {}
            lengths = pool.lengths[idx] if pool.lengths is not None else None
            batch[m] = (x, pool.tokens[idx], pool.labels[idx], views, changes, neutral, lengths)
        return batch

    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        losses = {}
        for m, (x, tokens, labels, views, changes, neutral, lengths) in batch.items():
            media = encoder(m, x)
            loss = contrastive_loss(media, encoder("text", tokens), labels)
            seen_changed = {name: encoder(m, xc) for name, xc in changes.items()}
            for key, (t, y) in views.items():
                seen = seen_changed.get(VIEW_CHANGES.get(m, {}).get(key), media)
                told = y >= 0  # items not told this attribute (`length_from_extra`) sit out its view
                if bool(told.any()):
                    view_loss = contrastive_loss(seen[told], encoder("text", t[told]), y[told])
                    loss = loss + attribute_weight * view_loss / len(views)
            for key, xn in neutral.items():
                phrases = encoder("text", pools[m].phrases[key])
                loss = loss + neutral_weight * neutral_loss(encoder(m, xn), phrases) / len(views)
            if reader is not None and m == "audio":
                w, b, margin = reader
                score = F.normalize(media.float(), dim=-1) @ w.to(media.device) + b.to(media.device)
                target = (lengths.to(media.device) * 2 - 1).float() * margin  # short -> -margin, long -> +margin
                loss = loss + length_words_weight * (((score[:, 1] - score[:, 0]) - target) / margin).pow(2).mean()
            losses[m] = loss
        return sum(losses.values()) / len(losses), {m: v.item() for m, v in losses.items()}

    settings = LoopSettings(steps=steps, lr=lr, weight_decay=0.01, warmup=min(30, steps // 5 + 1),
                            save_every=50, seed=seed, max_steps=max_steps, device=device)
    summary = train("tiny-encoder", encoder, batch_fn, loss_fn, out, settings)
    encoder.save_pretrained(Path(out) / "encoder")
    return summary
