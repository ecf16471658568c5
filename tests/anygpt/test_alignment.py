"""The decoder-side alignment loss (issue 20): it must rank a collapsed projector below a right one even
when the targets are mostly padding, and it must train a projector on cached LLM states."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anygpt.projectors import OutputProjector
from anygpt.train.alignment import (ProjectorCache, alignment_loss, cache_retrieval, caption_mask,
                                    collect_signal_states, contrastive_loss, same_target, train_projector)

B, TOKENS, DIM, REAL = 8, 77, 16, 6


def _padded_targets(b: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SD-like encodings: REAL caption tokens that differ, then padding states that all captions share."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(1, TOKENS, DIM, generator=g).expand(b, -1, -1).clone()  # the shared part
    target[:, :REAL] = torch.randn(b, REAL, DIM, generator=g)
    mask = torch.zeros(b, TOKENS, dtype=torch.bool)
    mask[:, :REAL] = True
    return target, mask


def test_a_collapsed_prediction_loses_to_a_noisy_right_one_when_targets_are_mostly_padding():
    target, mask = _padded_targets()
    collapsed = target.mean(0, keepdim=True).expand_as(target)
    noisy = target + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    # the old loss (MSE over all 77 positions) prefers the collapsed answer: that is the bug
    assert torch.nn.functional.mse_loss(collapsed, target) < torch.nn.functional.mse_loss(noisy, target)
    for weights in ({}, {"contrastive_weight": 0.0}):  # masked MSE alone already ranks them right
        bad, _ = alignment_loss(collapsed, target, mask, **weights)
        good, _ = alignment_loss(noisy, target, mask, **weights)
        assert bad > 3 * good, (weights, bad, good)
    _, logs = alignment_loss(target.clone(), target, mask)
    assert logs["mse"] == 0 and logs["top1"] == 1.0


def test_the_contrastive_term_rejects_collapse():
    target, mask = _padded_targets()
    log_b = math.log(B)
    mean = target.mean(0, keepdim=True).expand_as(target)
    assert contrastive_loss(mean, target, mask)[0].item() == pytest.approx(log_b, abs=1e-4)
    for seed in range(3):  # any other constant: log(B) or worse
        constant = torch.randn(1, TOKENS, DIM, generator=torch.Generator().manual_seed(seed)).expand_as(target)
        assert contrastive_loss(constant, target, mask)[0].item() >= log_b - 1e-4
    right, top1 = contrastive_loss(target.clone(), target, mask)
    assert right.item() < 0.1 * log_b and top1 == 1.0


def test_duplicate_captions_are_not_negatives():
    target, mask = _padded_targets(4)
    target, mask = torch.cat([target, target]), torch.cat([mask, mask])  # each caption twice
    assert same_target(target).sum() == 16
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert torch.equal(same_target(target), same_target(target, groups))
    loss, top1 = contrastive_loss(target.clone(), target, mask)
    assert loss.item() < 0.05 and top1 == 1.0  # without the exclusion it could not go below log(2)


def test_the_loss_trains_a_projector_on_a_cache_and_the_cache_round_trips(tmp_path):
    torch.manual_seed(0)
    n, signal, hidden = 24, 2, 12
    target, mask = _padded_targets(6)
    index = torch.arange(n) % 6
    states = torch.randn(6, signal, hidden)[index] + 0.05 * torch.randn(n, signal, hidden)
    cache = ProjectorCache(hidden=states, input_embeds=torch.randn(signal, hidden), index=index, targets=target,
                           masks=mask, captions=[f"caption {k}" for k in range(6)])
    cache.save(tmp_path / "cache.safetensors")
    again = ProjectorCache.load(tmp_path / "cache.safetensors")
    assert again.captions == cache.captions and torch.equal(again.hidden, cache.hidden)

    projector = OutputProjector(hidden, TOKENS, DIM, d_model=32, heads=2, encoder_layers=1, decoder_layers=1,
                                feedforward=64)
    history = train_projector(projector, again, steps=60, batch_size=12, lr=3e-3, warmup=5, log_every=10)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], history
    assert history[-1]["mse"] < history[0]["mse"]
    figures = cache_retrieval(projector, again)
    assert figures["top1"] > 0.5 and figures["spread"] > 0.3, figures


def test_dropout_acts_in_the_fit_only():
    """`set_dropout` reaches every layer of the projector (a train-mode forward varies, an eval one does
    not), a fit with dropout still learns and leaves the projector in eval mode, and a rate of 1 is refused."""
    from anygpt.projectors import set_dropout

    torch.manual_seed(0)
    projector = OutputProjector(12, TOKENS, DIM, d_model=32, heads=2, encoder_layers=1, decoder_layers=1,
                                feedforward=64)
    hidden, embeds = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    projector.train()
    assert torch.equal(projector(hidden, embeds), projector(hidden, embeds))  # built without dropout
    set_dropout(projector, 0.5)
    assert not torch.equal(projector(hidden, embeds), projector(hidden, embeds))
    projector.eval()
    assert torch.equal(projector(hidden, embeds), projector(hidden, embeds))
    with pytest.raises(ValueError, match="dropout"):
        set_dropout(projector, 1.0)

    n = 24
    target, mask = _padded_targets(6)
    index = torch.arange(n) % 6
    cache = ProjectorCache(hidden=torch.randn(6, 2, 12)[index], input_embeds=torch.randn(2, 12), index=index,
                           targets=target, masks=mask, captions=[f"caption {k}" for k in range(6)])
    history = train_projector(projector, cache, steps=60, batch_size=12, lr=3e-3, warmup=5, log_every=10,
                              dropout=0.1)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and not projector.training, history
    projector.train()  # a later training forward (e.g. stage 3 in the same process) has no dropout left
    assert torch.equal(projector(hidden, embeds), projector(hidden, embeds))


def test_caption_mask_marks_the_caption_tokens():
    from decoders import DECODERS

    image = DECODERS["image"].tiny()
    mask = caption_mask(image, ["a red circle", "a small blue square moving to the left"])
    assert mask.shape == (2, image.conditioning.tokens)
    assert 3 <= mask[0].sum() < mask[1].sum() < 20 and mask[:, 0].all()
    audio = DECODERS["audio"].tiny()
    assert caption_mask(audio, ["a beep"]).tolist() == [[True]]


def test_signal_states_are_collected_from_a_tiny_backbone(tiny_backbone_config):
    from anygpt.model import Turn
    from anygpt.pipeline import AnyGPT

    app = AnyGPT.from_config(tiny_backbone_config)
    model = app.model
    captions = ["a red circle", "a blue square", "a red circle"]
    samples = [([Turn("user", f"draw {c}"), Turn("assistant", model.signal_string("image"))], [("image", c)])
               for c in captions]
    samples.append(([Turn("user", "play a beep"), Turn("assistant", "Sure. " + model.signal_string("audio"))],
                     [("audio", "a beep")]))
    caches = collect_signal_states(app, samples, batch_size=2)
    image = caches["image"]
    n_signal = tiny_backbone_config.signal_tokens["image"]
    assert image.hidden.shape == (3, n_signal, 64) and image.input_embeds.shape == (n_signal, 64)
    assert image.captions == ["a red circle", "a blue square"] and image.index.tolist() == [0, 1, 0]
    assert image.targets.shape == (2, *tiny_backbone_config.decoders["image"].conditioning)
    assert torch.allclose(image.hidden[0], image.hidden[2], atol=1e-5)  # same conversation, same states
    assert caches["audio"].masks.tolist() == [[True]]
    projector = model.output_projectors["image"]
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    history = train_projector(projector, image, steps=3, batch_size=3, log_every=1)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    assert any(not torch.equal(before[k], v) for k, v in projector.state_dict().items())


def test_projectors_that_read_the_reply_cache_padded_rows_and_mask_the_padding(tiny_backbone_config, tmp_path):
    """With `projector.reads = "reply"` a run's projector reads the reply's words up to the run's end:
    runs of different lengths are cached right-padded with their padding mask, and a padded row
    projects as the row alone does (the padding is masked, not read)."""
    from anygpt.model import Turn
    from anygpt.pipeline import AnyGPT

    projector_settings = tiny_backbone_config.projector.model_copy(update={"reads": "reply"})
    app = AnyGPT.from_config(tiny_backbone_config.model_copy(update={"projector": projector_settings}))
    model = app.model
    replies = ["Here is a red circle.", "A blue square, drawn for you as asked."]
    samples = [([Turn("user", "draw it"), Turn("assistant", f"{r} {model.signal_string('image')}")],
                [("image", r)]) for r in replies]
    n_signal = tiny_backbone_config.signal_tokens["image"]
    words = [len(model.tokenizer(f"{r} ", add_special_tokens=False).input_ids) for r in replies]
    cache = collect_signal_states(app, samples, batch_size=2)["image"]
    lengths = (~cache.padding).sum(1).tolist()
    assert lengths[0] < lengths[1] == cache.hidden.shape[1]
    assert all(words[i] <= lengths[i] - n_signal <= words[i] + 1 for i in range(2))  # the words (a space may merge)
    assert cache.input_embeds.shape == cache.hidden.shape
    cache.save(tmp_path / "cache.safetensors")
    again = ProjectorCache.load(tmp_path / "cache.safetensors")
    assert torch.equal(again.padding, cache.padding) and torch.equal(again.hidden, cache.hidden)

    projector = model.output_projectors["image"].eval()
    with torch.no_grad():
        both = projector(cache.hidden, cache.input_embeds, cache.padding)
        alone = projector(cache.hidden[:1, :lengths[0]], cache.input_embeds[:1, :lengths[0]])
        unmasked = projector(cache.hidden[:1], cache.input_embeds[:1])
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-3)  # the mask is what keeps the zeros out
    history = train_projector(projector, again, steps=2, batch_size=2, log_every=1)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_a_pooled_projector_is_fitted_on_token_states_and_writes_their_normalised_sum():
    """A decoder of one sentence vector (the tiny audio's MiniLM: mean of the token states, normalised):
    the pooled projector's fit compares its token states with the encoder's (zero at padding), and its
    output is their sum L2-normalised, so the fitted token states give the right pooled vectors."""
    torch.manual_seed(0)
    n, signal, hidden, tokens, dim = 24, 2, 12, 5, 8
    with pytest.raises(ValueError, match="one vector"):
        OutputProjector(hidden, 2, dim, d_model=32, heads=2, encoder_layers=1, decoder_layers=1, pool_from=tokens)
    projector = OutputProjector(hidden, 1, dim, d_model=32, heads=2, encoder_layers=1, decoder_layers=1,
                                feedforward=64, pool_from=tokens)
    h, e = torch.randn(3, 4, hidden), torch.randn(3, 4, hidden)
    out = projector(h, e)
    assert out.shape == (3, 1, dim) and projector.token_states(h, e).shape == (3, tokens, dim)
    assert torch.allclose(out[:, 0], F.normalize(projector.token_states(h, e).sum(1), dim=-1))
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 1))

    states = torch.randn(6, tokens, dim) * (torch.arange(tokens) < torch.tensor([[2], [3], [4], [5], [3], [2]]))[..., None]
    index = torch.arange(n) % 6
    cache = ProjectorCache(hidden=torch.randn(6, signal, hidden)[index], input_embeds=torch.randn(signal, hidden),
                           index=index, targets=states, masks=torch.ones(6, tokens, dtype=torch.bool),
                           captions=[f"caption {k}" for k in range(6)])
    history = train_projector(projector, cache, steps=150, batch_size=12, lr=3e-3, warmup=5, log_every=50)
    assert history[-1]["mse"] < 0.5 * history[0]["mse"], history
    pooled = F.normalize(states.sum(1), dim=-1)  # the sentence vectors the decoder would take
    with torch.no_grad():
        made = projector(cache.hidden[:6], cache.input_embeds.expand(6, -1, -1))[:, 0]
    assert torch.equal(torch.cdist(made, pooled).argmin(1), torch.arange(6))


def test_caches_concatenate_with_their_padding_and_one_target_per_caption():
    """Two caches of one decoder (the reply's length differs: 3 and 5 read tokens) merge row for row;
    a caption in both keeps one target, so the contrastive term does not take it for a negative."""
    def cache(n, captions, lengths=None):
        rows = len(lengths or [n] * 2)
        return ProjectorCache(hidden=torch.randn(rows, n, 4), input_embeds=torch.randn(rows, n, 4),
                              index=torch.arange(rows) % len(captions), targets=torch.randn(len(captions), 2, 3),
                              masks=torch.ones(len(captions), 2, dtype=torch.bool), captions=captions,
                              padding=None if lengths is None else torch.arange(n)[None] >= torch.tensor(lengths)[:, None])

    a, b = cache(3, ["x", "y"]), cache(5, ["y", "z", "w"], lengths=[5, 2, 4])
    both = ProjectorCache.concat([a, b])
    assert both.captions == ["x", "y", "z", "w"] and both.index.tolist() == [0, 1, 1, 2, 3]
    assert torch.equal(both.targets[1], a.targets[1]) and torch.equal(both.targets[3], b.targets[2])
    assert both.hidden.shape == (5, 5, 4)
    assert (~both.padding).sum(1).tolist() == [3, 3, 5, 2, 4]
    assert torch.equal(both.hidden[1, :3], a.hidden[1]) and torch.equal(both.input_embeds[3, :2], b.input_embeds[1, :2])
    assert not both.hidden[3, 2:].any()
