"""The LLM benchmark's scoring, checked with two stand-in models whose right answers are known.

An oracle that reads each request the way a perfect model would (the probes read attached media,
toy-world rendering makes the asked media) must score 100% everywhere; a model that always says
"hello" and makes nothing must score 0% on everything but plain chat.
"""

from __future__ import annotations

from PIL import Image

from anygpt.data import toyworld as tw
from anygpt.eval import benchmark
from anygpt.eval.benchmark import _labels_in, _probe
from anygpt.response import Response, Trace
from decoders.media import AudioArtifact, ImageArtifact, VideoArtifact

def _render(modality: str, labels: dict[str, str]):
    fixed = {k: labels[k] for k in tw.LABELS[modality] if k in labels}
    try:
        spec = tw.sample(modality, tw.example_rng(0, "heldout", modality, 0), "heldout", **fixed)
    except ValueError:  # a combination of the training split (a mix dialog's recoloured shape)
        spec = tw.sample(modality, tw.example_rng(0, "train", modality, 0), "train", **fixed)
    data = tw.render(spec)
    meta = {"modality": modality}
    if modality == "image":
        return ImageArtifact(Image.fromarray(data), meta)
    if modality == "audio":
        return AudioArtifact(data, tw.SAMPLE_RATE, meta)
    return VideoArtifact(data, 8, meta)


class _StandIn:
    """A model that answers each request of a batch on its own, as AnyGPT.chat_batch does."""

    def chat_batch(self, requests):
        return [self.chat(r.prompt, media=list(r.media), **r.options) for r in requests]


class Oracle(_StandIn):
    def chat(self, prompt, *, media, seed, num_inference_steps):
        text, artifacts = [], []
        for modality, path in media:
            data = tw.load(modality, path)
            found = _probe(_as_artifact(modality, data), modality)
            text.append(" ".join(found.values()))
        requests = [part for part in prompt.replace("?", "").split(" and ")]
        for request in requests:
            for m, words in (("image", ("draw", "picture", "paint", "image", "sketch")),
                             ("audio", ("play", "sound", "audio", "hear", "listen", "synthesise", "produce")),
                             ("video", ("animate", "clip", "video", "film", "movie", "animation"))):
                if set(words) & set(request.split()) and not media:
                    artifacts.append(_render(m, _labels_in(request, m)))
                    break
        if media and "draw its shape in" in prompt:  # mix: the attached item's shape in the asked colour
            labels = _labels_in(text[0], media[0][0]) | {"color": prompt.rsplit(" ", 1)[-1]}
            artifacts.append(_render("image", labels))
        runs = [{"modality": a.meta["modality"]} for a in artifacts]
        return Response(" ".join(text), artifacts, Trace(signal_runs=runs), [])


def _as_artifact(modality, data):
    if modality == "audio":
        return AudioArtifact(data, tw.SAMPLE_RATE, {"modality": modality})
    if modality == "image":
        return ImageArtifact(Image.fromarray(data), {"modality": modality})
    return VideoArtifact(data, 8, {"modality": modality})


class Mute(_StandIn):
    def chat(self, prompt, **_):
        return Response("hello", [], Trace(), [])


def test_an_oracle_scores_full_marks_and_a_mute_model_none():
    oracle = benchmark.eval_llm(Oracle(), n=40)
    assert {"routing_exact", "plain_chat_no_signal", "text_to_image_color_e2e", "image_to_text_color"} <= set(oracle)
    assert min(oracle.values()) >= 0.95, oracle
    mute = benchmark.eval_llm(Mute(), n=40)
    assert mute["plain_chat_no_signal"] == 1.0
    assert mute["routing_exact"] < 0.5
    assert max(v for k, v in mute.items() if k not in ("plain_chat_no_signal", "routing_exact")) == 0.0, mute


def test_each_media_figure_rests_on_enough_items():
    # the mixed dialogs hold 2-6 questions per attribute and make 5-15 items per modality; the extra
    # held-out questions and requests make each `{m}_to_text_{attribute}` figure one that can tell
    # 85% from 100%, and each `text_to_{m}_..._e2e` figure comparable with the decoders' own (48 items)
    kept: list = []
    scores = benchmark.eval_llm(Oracle(), n=48, keep=kept)
    counts: dict[str, int] = {}
    for dialog, _ in kept:
        for key in dialog["expect"]["answer"]:
            name = f"{dialog['expect']['about']}_to_text_{key}"
            counts[name] = counts.get(name, 0) + 1
        for turn in dialog["turns"]:
            for item in turn.get("outputs", []):
                counts[item["modality"]] = counts.get(item["modality"], 0) + 1
    assert len(kept) == 48 + 96 + 96
    assert {k for k in counts if "_to_text_" in k} == {k for k in scores if "_to_text_" in k}
    assert min(v for k, v in counts.items() if "_to_text_" in k) >= 12, counts
    assert min(counts[m] for m in ("image", "audio", "video")) >= 30, counts
    only_mix: list = []
    benchmark.eval_llm(Oracle(), n=48, keep=only_mix, asks=0, makes=0)
    assert len(only_mix) == 48
