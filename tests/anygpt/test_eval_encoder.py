"""The encoder benchmark's retrieval (`anygpt eval --part encoder`), checked with stand-in encoders
built from the model-free probes, whose right answers are known."""

import itertools

import torch

from anygpt.data import toyworld as tw
from anygpt.eval import benchmark, probes


def test_every_class_prompt_names_all_its_attributes_and_no_two_classes_share_one():
    for m in tw.MODALITIES:
        classes, prompts = benchmark.class_prompts(m)
        assert len(classes) == len({tuple(c.values()) for c in classes}) == len(list(
            itertools.product(*tw.VALUES[m].values())))
        for labels, texts in zip(classes, prompts):
            assert texts, (m, labels)
            for text in texts:  # the text parser reads back every attribute of its class
                assert probes.probe_text(text, m) == labels, (m, text)
        flat = [t for ts in prompts for t in ts]
        assert len(flat) == len(set(flat))


class ProbeEncoder:
    """Embeds audio and text as one-hot attribute classes read by the probes; `blind` drops an attribute."""

    def __init__(self, blind: str | None = None):
        self.keys = [k for k in tw.LABELS["audio"] if k != blind]
        self.classes = list(itertools.product(*(tw.VALUES["audio"][k] for k in self.keys)))

    def _onehot(self, labels: dict) -> torch.Tensor:
        v = torch.zeros(len(self.classes))
        v[self.classes.index(tuple(labels[k] for k in self.keys))] = 1
        return v

    def encode_text(self, texts):
        return torch.stack([self._onehot(probes.probe_text(t, "audio")) for t in texts])

    def encode(self, modality, waves):
        assert modality == "audio"
        return torch.stack([self._onehot(probes.probe_audio(w, tw.SAMPLE_RATE)) for w in waves])


def test_audio_retrieval_needs_both_kind_and_length():
    right = benchmark.eval_encoder(ProbeEncoder(), n=24, modalities=("audio",))["retrieval_r1_audio"]
    assert right == 1.0
    # an encoder that cannot hear length finds the right class only when the tie falls its way
    blind = benchmark.eval_encoder(ProbeEncoder(blind="length"), n=24, modalities=("audio",))["retrieval_r1_audio"]
    assert blind <= 0.75
