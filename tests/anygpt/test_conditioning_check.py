"""The collapse check of `anygpt eval --part llm` (issue 20), on stand-ins whose answers are known: a
projector that writes one constant conditioning must fail it, one that writes the decoder's own
encoding of the asked caption must pass it, and the real pipeline must feed it without decoding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from anygpt.data.dialogs import MAKE
from anygpt.eval.conditioning import conditioning_cases, eval_conditioning

MODALITIES = ("image", "audio", "video")


@pytest.fixture(scope="module")
def decoders():
    from decoders import DECODERS

    return {m: DECODERS[m].tiny() for m in MODALITIES}


class StandIn:
    """Answers each request with `write(modality, caption)` as its one run (None: no run); never decodes."""

    def __init__(self, decoders, write):
        self.config = SimpleNamespace(decoders=decoders)
        self._decoders, self.write = decoders, write

    def decoder(self, modality):
        return self._decoders[modality]

    def conditioning_batch(self, requests):
        out = []
        for r in requests:
            (modality,) = r.options["force"]
            caption = next(r.prompt[len(a):len(r.prompt) - len(b)] for a, b in
                           (t.split("{desc}") for t in MAKE[modality]["heldout"])
                           if r.prompt.startswith(a) and r.prompt.endswith(b))
            conditioning = self.write(modality, caption)
            out.append([] if conditioning is None else [(modality, conditioning)])
        return out


def test_cases_reword_only_the_attributes():
    for m, k in (("image", 18), ("audio", 16), ("video", 72)):
        for case in conditioning_cases(m, 6):
            assert 2 <= len(case.candidates) == len(set(case.candidates)) <= k
            assert case.candidates[case.right] == case.caption and case.caption in case.prompt


def test_a_collapsed_projector_fails_and_a_perfect_one_passes(decoders):
    n = 24
    perfect = StandIn(decoders, lambda m, caption: decoders[m].encode_text([caption])[0])
    good = eval_conditioning(perfect, n=n)
    assert set(good) == {f"conditioning_l2_{f}_{m}" for f in ("top1", "top1_asked_wording", "spread")
                         for m in MODALITIES}
    for m in MODALITIES:
        assert good[f"conditioning_l2_top1_{m}"] == good[f"conditioning_l2_top1_asked_wording_{m}"] == 1.0
        assert good[f"conditioning_l2_spread_{m}"] == pytest.approx(1.0, abs=1e-6)

    constants = {m: decoders[m].encode_text(["a thing"])[0] for m in MODALITIES}
    collapsed = eval_conditioning(StandIn(decoders, lambda m, caption: constants[m]), n=n)
    for m in MODALITIES:
        assert collapsed[f"conditioning_l2_spread_{m}"] < 1e-6
        assert collapsed[f"conditioning_l2_top1_{m}"] <= 0.25, collapsed  # chance: 1/18, 1/16, 1/72
        assert collapsed[f"conditioning_l2_top1_asked_wording_{m}"] <= 0.25, collapsed

    # a request whose run never comes (no conditioning) counts as a miss
    missing = eval_conditioning(StandIn(decoders, lambda m, caption: None), n=4, modalities=["image"])
    assert missing["conditioning_l2_top1_image"] == 0.0


def test_the_figure_asks_for_the_combination_not_the_held_out_wording(decoders):
    """The LLM rewords every request ("Here is a yellow triangle moving right."): a projector that writes
    the decoder's encoding of the request in a training wording passes; one that names another
    combination in the asked wording itself fails."""
    n = 16
    cases = {m: {c.caption: c for c in conditioning_cases(m, n)} for m in MODALITIES}
    reworded = {"image": "a {color} {shape}", "audio": "a recording of a {length} {kind}",
                "video": "a {color} {shape} moving {direction}", ("kind",): "a {kind}"}  # a length not asked for: none

    def rewrite(m, caption):
        case = cases[m][caption]
        return decoders[m].encode_text([reworded.get(case.named, reworded[m]).format(**case.matches[0])])[0]

    same = StandIn(decoders, rewrite)
    results = eval_conditioning(same, n=n)
    for m in MODALITIES:
        assert results[f"conditioning_l2_top1_{m}"] == 1.0, (m, results)

    def other(m, caption):  # the asked caption with its first attribute's value swapped
        case = next(c for c in conditioning_cases(m, n) if c.caption == caption)
        return decoders[m].encode_text([case.candidates[(case.right + 1) % len(case.candidates)]])[0]

    wrong = eval_conditioning(StandIn(decoders, other), n=n)
    for m in MODALITIES:
        assert wrong[f"conditioning_l2_top1_{m}"] == wrong[f"conditioning_l2_top1_asked_wording_{m}"] == 0.0, (m, wrong)


def test_the_pipeline_feeds_the_check_without_decoding(tiny, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the collapse check must not run a decoder")

    monkeypatch.setattr(tiny, "_decode", no_decoding)
    results = eval_conditioning(tiny, n=2, modalities=["image"])
    assert set(results) == {"conditioning_l2_top1_image", "conditioning_l2_top1_asked_wording_image",
                            "conditioning_l2_spread_image"}
    assert all(0.0 <= v for v in results.values())
