"""`anygpt eval`: the held-out toy-world benchmark (README, "The toy world, training and evaluation").

Every figure is judged on held-out attribute combinations and held-out caption wordings,
generated in memory from a fixed seed, so the benchmark needs no files and is the same
on every machine.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from anygpt.data import toyworld as tw

EVAL_SEED = 1234


def heldout_examples(modality: str, n: int, seed: int = EVAL_SEED) -> list[tuple[tw.Spec, np.ndarray, str]]:
    """n held-out (spec, rendered array, held-out caption) triples."""
    out = []
    for i in range(n):
        rng = tw.example_rng(seed, "heldout", modality, i)
        spec = tw.sample(modality, rng, "heldout")
        out.append((spec, tw.render(spec), tw.caption(spec, rng, "heldout")))
    return out


def class_prompts(modality: str) -> tuple[list[dict[str, str]], list[list[str]]]:
    """Every attribute class of a modality (train and held-out classes alike) with its prompt ensemble:
    every held-out wording that names all of its attributes (`toyworld.wordings`)."""
    keys = tw.LABELS[modality]
    classes = [dict(zip(keys, values)) for values in itertools.product(*(tw.VALUES[modality][k] for k in keys))]
    return classes, [tw.wordings(modality, labels, "heldout") for labels in classes]


@torch.no_grad()
def class_embeddings(encoder, modality: str) -> tuple[list[dict[str, str]], torch.Tensor]:
    """The classes and one unit text embedding per class [C, D]: the normalised mean of its prompts'
    normalised embeddings, CLIP's prompt ensembling. One caption per class would let wording decide:
    a template that leaves an attribute out words two classes alike."""
    classes, prompts = class_prompts(modality)
    flat = [p for ps in prompts for p in ps]
    text = torch.nn.functional.normalize(encoder.encode_text(flat).float(), dim=-1)
    sizes = [len(ps) for ps in prompts]
    means = torch.stack([chunk.mean(0) for chunk in text.split(sizes)])
    return classes, torch.nn.functional.normalize(means, dim=-1)


@torch.no_grad()
def eval_encoder(encoder, n: int = 60, modalities=("image", "audio", "video", "depth")) -> dict[str, float]:
    """Cross-modal retrieval: each held-out item against every attribute class (`class_embeddings`); recall@1."""
    results = {}
    for m in modalities:
        classes, text = class_embeddings(encoder, m)
        examples = heldout_examples(m, n)
        media = torch.nn.functional.normalize(encoder.encode(m, [x for _, x, _ in examples]).float(), dim=-1)
        best = (media @ text.T).argmax(1)
        hits = [classes[b] == spec.labels() for b, (spec, _, _) in zip(best.tolist(), examples)]
        results[f"retrieval_r1_{m}"] = float(np.mean(hits))
    return results


# What `read_from_words` reads: per modality, the attribute, and the other attribute its captions pair it with.
FROM_WORDS = {"audio": ("length", "kind"), "video": ("direction", "color")}


def word_captions(modality: str) -> tuple[list[str], list[str]]:
    """Every caption of things the world lacks (`toyworld.CAPTION_SOUNDS`, `CAPTION_COLOURS`), and
    the value of the attribute each names."""
    if modality == "audio":
        rows = [(t.format(kind=k, length=v), v) for k in tw.CAPTION_SOUNDS for v in tw.LENGTHS
                for t in tw.SOUND_CAPTIONS]
    else:
        rows = [(t.format(color=c, shape=s, direction=v), v) for c in tw.CAPTION_COLOURS for s in tw.SHAPES
                for v in tw.DIRECTIONS for t in tw.CLIP_CAPTIONS]
    return [r[0] for r in rows], [r[1] for r in rows]


def word_reader(encode_text, modality: str, weight_decay: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear reader of `read_from_words` (weights [D, values], bias [values], the values of
    `toyworld.VALUES[modality][FROM_WORDS[modality][0]]`), fitted on `encode_text`'s embeddings of the
    captions of things the world lacks. Detached: a fixed reader, also for training (the tiny
    encoder's `--length-words-weight`)."""
    key, _ = FROM_WORDS[modality]
    values = tw.VALUES[modality][key]
    captions, said = word_captions(modality)
    with torch.no_grad():
        x = torch.nn.functional.normalize(encode_text(captions).float(), dim=-1)
    y = torch.tensor([values.index(v) for v in said])
    w = torch.zeros(x.shape[1], len(values), requires_grad=True)
    b = torch.zeros(len(values), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def read_from_words(encoder, n: int = 60, modalities=("audio", "video"), weight_decay: float = 1e-2
                    ) -> dict[str, float]:
    """A sound's length and a clip's direction, read apart from its kind or colour: a linear reader
    (multinomial logistic regression on unit embeddings, L2 `weight_decay`) fitted on the encoder's
    text embeddings of captions of sounds and colours the world lacks ("a short whistle", "a pink
    circle moving up"), then read on held-out sounds and clips. In the world's training split a kind
    comes at one length and a colour lacks one direction, so a reader fitted on it learns the kind;
    these captions come with every value. The figure says how far the attribute lies along one
    direction, the same for every kind, as a reader trained on words needs (the LLM's is one; README,
    "Lengths and directions learnt from words")."""
    results = {}
    for m in modalities:
        key, _ = FROM_WORDS[m]
        values = tw.VALUES[m][key]
        w, b = word_reader(encoder.encode_text, m, weight_decay)
        examples = heldout_examples(m, n)
        media = torch.nn.functional.normalize(encoder.encode(m, [a for _, a, _ in examples]).float(), dim=-1)
        truth = torch.tensor([values.index(spec.labels()[key]) for spec, _, _ in examples])
        results[f"{m}_{key}_from_words"] = float(((media @ w + b).argmax(1) == truth).float().mean())
    return results


# What each decoder is judged on (the attributes its caption names that a probe can read back).
DECODER_ATTRIBUTES = {"image": ("color", "shape"), "audio": ("kind",), "video": ("direction", "color")}


@torch.no_grad()
def eval_decoder(decoder, modality: str, n: int = 48, *, steps: int = 25, guidance: float = 4.0,
                 batch: int = 16, conditioning=None, keep: list | None = None, **size) -> dict[str, float]:
    """Text -> media through the decoder's own text encoder (or the given `conditioning`, e.g. from
    the LLM), judged by the model-free probes on held-out captions. `keep` collects (caption, artifact)."""
    examples = heldout_examples(modality, n)
    captions = [c for _, _, c in examples]
    embeds = decoder.encode_text(captions) if conditioning is None else conditioning
    artifacts = []
    for i in range(0, n, batch):
        artifacts += decoder.decode(embeds[i:i + batch], seeds=list(range(i, min(i + batch, n))),
                                    num_inference_steps=steps, guidance_scale=guidance, **size)
    if keep is not None:
        keep += list(zip(captions, artifacts))
    hits = {a: [] for a in DECODER_ATTRIBUTES[modality]}
    for (spec, _, _), artifact in zip(examples, artifacts):
        found = _probe(artifact, modality)
        for a in hits:
            hits[a].append(found.get(a) == spec.labels()[a])
    return {f"text_to_{modality}_{a}": float(np.mean(v)) for a, v in hits.items()}


def sample_grid(samples: list[tuple[str, object]], path, columns: int = 8, scale: int = 2) -> None:
    """A PNG of generated images (one tile each) or videos (a row of frames each), captioned."""
    from PIL import Image, ImageDraw

    tiles = []
    for caption, artifact in samples:
        if hasattr(artifact, "frames"):
            strip = np.concatenate(list(artifact.frames), axis=1)
        else:
            strip = np.asarray(artifact.image.convert("RGB"))
        tile = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (tile.width, tile.height + 14), (255, 255, 255))
        canvas.paste(tile, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), caption[:tile.width // 6], fill=(0, 0, 0))
        tiles.append(canvas)
    cols = columns if not hasattr(samples[0][1], "frames") else 1
    rows = (len(tiles) + cols - 1) // cols
    w, h = tiles[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * w, (i // cols) * h))
    grid.save(path)


def audio_sample(caption: str, artifact, stem) -> dict:
    """Save one generated sound as STEM.wav and what it holds as STEM.json: its caption, what the probe
    reads and its measured pitch track (peak frequency every 0.1 s), so a README can describe it."""
    import json
    from pathlib import Path

    from anygpt.eval import probes

    stem = Path(stem)
    artifact.save(stem.with_suffix(".wav"))
    info = {"caption": caption, "probe": _probe(artifact, "audio"),
            "pitch_track_hz": probes.pitch_track(artifact.waveform, artifact.sample_rate)}
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _labels_in(text: str, modality: str) -> dict[str, str]:
    """The attribute values a caption or reply names (longest match first: "rising sweep" before "sweep")."""
    text = text.lower()
    found = {}
    for key in tw.LABELS[modality]:
        for value in sorted(tw.VALUES[modality][key], key=len, reverse=True):
            if value in text:
                found[key] = value
                break
    return found


def _probe(artifact, modality: str) -> dict[str, str]:
    from anygpt.eval import probes

    if modality == "image":
        return probes.probe_image(np.asarray(artifact.image.convert("RGB")))
    if modality == "audio":
        return probes.probe_audio(artifact.waveform, artifact.sample_rate)
    return probes.probe_video(artifact.frames)


@torch.no_grad()
def eval_llm(app, n: int = 60, *, steps: int = 10, seed: int = EVAL_SEED, keep: list | None = None,
             batch: int = 8, asks: int | None = None, makes: int | None = None) -> dict[str, float]:
    """The whole model on held-out dialogs (held-out wordings, attribute combinations and media).

    - `routing_exact`: the reply makes exactly the modalities the dialog asks for (none for chat);
    - `plain_chat_no_signal`: plain questions get no signal token;
    - `{m}_to_text_{attribute}`: a question about an attached item is answered with the right value;
    - `text_to_{m}_{attribute}_e2e`: media the LLM chose to make show the asked attributes (probes).
    The `n` dialogs mix every kind of request; `asks` more (default `2 * n`) are questions about an
    attached item only, so that each `{m}_to_text_{attribute}` figure rests on a dozen or more answers
    (the mixed dialogs hold 2-6 per attribute) and the routing figures stay those of the mix. Likewise
    `makes` more (default `2 * n`) are requests to make one or two items, so that each
    `text_to_{m}_{attribute}_e2e` figure rests on 30 or more items (the mix makes 5-15 per modality,
    where one sound is 20 points).
    `keep` collects (dialog, response) pairs. Dialogs go `batch` at a time through `app.chat_batch`
    (each with its own seed), as scripted generation sends them.
    """
    import tempfile
    from collections import defaultdict

    from anygpt.data.dialogs import make_dialogs, read_dialogs
    from anygpt.pipeline import ChatRequest

    scores: dict[str, list[bool]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="anygpt-eval-") as folder:
        manifest = tw.make_dataset(folder, n_per_modality={"image": 40, "audio": 40, "video": 40}, seed=seed,
                                   split="heldout")
        dialogs = read_dialogs(make_dialogs(manifest, n, seed=seed, split="heldout"))
        mixed = len(dialogs)  # make_dialogs rewrites the file: the mix is read before the questions are made
        asks = 2 * n if asks is None else asks
        if asks:
            dialogs += read_dialogs(make_dialogs(manifest, asks, seed=seed + 1, split="heldout", mix={"ask": 1.0}))
        makes = 2 * n if makes is None else makes
        if makes:
            dialogs += read_dialogs(make_dialogs(manifest, makes, seed=seed + 2, split="heldout", mix={"make": 1.0}))
        requests = [ChatRequest(d["turns"][0]["text"], media=[(item["modality"], item["path"])
                                                              for item in d["turns"][0].get("media", [])],
                                options={"seed": i, "num_inference_steps": steps}) for i, d in enumerate(dialogs)]
        responses = [r for i in range(0, len(requests), batch) for r in app.chat_batch(requests[i:i + batch])]
        for i, (dialog, r) in enumerate(zip(dialogs, responses)):
            expect = dialog["expect"]
            made = [a.meta["modality"] for a in r.artifacts]
            if i < mixed:
                scores["routing_exact"].append(sorted(made) == sorted(expect["outputs"]))
            if dialog["kind"] == "chat":
                scores["plain_chat_no_signal"].append(not r.trace.signal_runs)
            about = expect.get("about")
            for key, value in expect["answer"].items():
                scores[f"{about}_to_text_{key}"].append(_labels_in(r.text, about).get(key) == value)
            wanted = [o for t in dialog["turns"] if t["role"] == "assistant" for o in t.get("outputs", [])]
            for m in DECODER_ATTRIBUTES:
                targets = [_labels_in(o["caption"], m) for o in wanted if o["modality"] == m]
                artifacts = [a for a in r.artifacts if a.meta["modality"] == m]
                for target, artifact in zip(targets, artifacts + [None] * len(targets)):
                    found = _probe(artifact, m) if artifact is not None else {}
                    for key in DECODER_ATTRIBUTES[m]:
                        if key in target:
                            scores[f"text_to_{m}_{key}_e2e"].append(found.get(key) == target[key])
            if keep is not None:
                keep.append((dialog, r))
    return {k: float(np.mean(v)) for k, v in sorted(scores.items())}

