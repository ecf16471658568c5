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


class WordsEncoder:
    """Embeds a caption by the length or direction it names and a sound or clip by what the probes read,
    each as a one-hot with the kind or colour's one-hot beside it; `blind` embeds media as its kind or
    colour alone."""

    def __init__(self, blind: bool = False):
        self.blind = blind

    @staticmethod
    def _vector(value: str, other: str) -> torch.Tensor:
        values = list(tw.LENGTHS) + list(tw.DIRECTIONS)
        others = list(tw.AUDIO_KINDS) + list(tw.COLORS) + list(tw.CAPTION_SOUNDS) + list(tw.CAPTION_COLOURS)
        v = torch.zeros(len(values) + len(others))
        if value:
            v[values.index(value)] = 1
        v[len(values) + others.index(other)] = 1
        return v

    def encode_text(self, texts):
        out = []
        for t in texts:
            value = next(w for w in list(tw.LENGTHS) + list(tw.DIRECTIONS) if w in t.split())
            other = next(w for w in tw.CAPTION_SOUNDS + tw.CAPTION_COLOURS if w in t.split())
            out.append(self._vector(value, other))
        return torch.stack(out)

    def encode(self, modality, items):
        out = []
        for x in items:
            if modality == "audio":
                read = probes.probe_audio(x, tw.SAMPLE_RATE)
                out.append(self._vector(None if self.blind else read["length"], read["kind"]))
            else:
                read = probes.probe_video(x)
                out.append(self._vector(None if self.blind else read["direction"], read["color"]))
        return torch.stack(out)


def test_length_and_direction_read_from_words_need_them_apart_from_kind_and_colour():
    right = benchmark.read_from_words(WordsEncoder(), n=24)
    assert right == {"audio_length_from_words": 1.0, "video_direction_from_words": 1.0}
    blind = benchmark.read_from_words(WordsEncoder(blind=True), n=24)
    assert blind["audio_length_from_words"] <= 0.75 and blind["video_direction_from_words"] <= 0.5
