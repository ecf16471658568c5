"""The fast path from request to media: hidden states kept from generation, batched generation,
and the LoRA adapter merged for inference. Each must give what the plain path gives."""

from __future__ import annotations

import pytest
import torch

from anygpt import AnyGPT
from anygpt.model import Turn
from anygpt.pipeline import ChatRequest

FAST = dict(num_inference_steps=2, max_new_tokens=16)


def _prompt(model, text, media=()):
    return model.prepare_inputs_labels([[Turn("user", text, list(media))]]).inputs_embeds


@torch.inference_mode()
def test_generation_keeps_the_hidden_states_of_a_full_forward(tiny):
    """Each token fed back during generation has the last-layer state a full forward pass gives it."""
    model = tiny.model
    embeds = _prompt(model, "What is the capital of France?")
    reply = model.generate(embeds, max_new_tokens=10, temperature=0.0, seed=0, allowed=set())
    assert reply.generated == len(reply.ids) + 1  # stopped at its end token, within the limit
    assert reply.hidden is not None and reply.hidden.shape == (len(reply.ids), model.llm.config.hidden_size)
    full = torch.cat([embeds, model.llm.get_input_embeddings()(torch.tensor(reply.ids)[None])], dim=1)
    expected = model.llm(inputs_embeds=full, output_hidden_states=True).hidden_states[-1][0, embeds.shape[1]:]
    assert torch.allclose(reply.hidden, expected, atol=1e-4)


def test_a_written_run_is_projected_without_a_second_forward(tiny, monkeypatch):
    """When the LLM writes the run itself, its conditioning comes from generation's own states
    (no forward over the conversation afterwards) and equals the conditioning of a full forward
    pass; the run's tokens after its first go through the model together."""
    model = tiny.model
    tiny.chat("draw a red circle", **FAST)  # warm: decoder loaded, LoRA merged
    forwards = []
    hook = model.llm.get_output_embeddings().register_forward_hook(lambda m, a, o: forwards.append(a[0].shape[1]))
    conditioning = []
    project = model.signal_conditioning
    monkeypatch.setattr(model, "signal_conditioning", lambda *a: conditioning.extend(project(*a)) or conditioning)
    try:
        r = tiny.chat("draw a red circle", outputs=("image",), **FAST)
    finally:
        hook.remove()
    assert [run["modality"] for run in r.trace.signal_runs] == ["image"], r.trace.raw_reply
    with torch.inference_mode():
        embeds = model.prepare_inputs_labels([r.history[:-1]]).inputs_embeds
    assert forwards and max(forwards) < embeds.shape[1]  # no forward over the whole conversation
    run = len(tiny.model.signal.ids["image"])
    assert len(forwards) == r.trace.generated_tokens - run + 2  # the run's middle tokens in one forward
    with torch.inference_mode():
        ids = model.tokenizer(r.trace.raw_reply, add_special_tokens=False).input_ids
        expected = project(r.history[:-1], ids, model.find_runs(ids))
    assert torch.allclose(conditioning[0], expected[0], atol=1e-4)


@torch.inference_mode()
def test_batched_generation_equals_one_prompt_at_a_time(tiny, media_dir):
    model = tiny.model
    prompts = [_prompt(model, "What is the capital of France?"),
               _prompt(model, "what colour is the shape?", [("image", str(media_dir / "red_square.png"))]),
               _prompt(model, "draw a green triangle")]
    assert len({p.shape[1] for p in prompts}) == 3  # different lengths: the batch is padded
    options = dict(max_new_tokens=10, temperature=0.0, seed=0, allowed={"image"}, force={"image"})
    together = model.generate_batch(prompts, **options)
    alone = [model.generate(p, **options) for p in prompts]
    for a, b in zip(together, alone):
        assert a.ids == b.ids and a.generated == b.generated
        assert torch.allclose(a.hidden, b.hidden, atol=1e-4)
    assert any(a.generated < 10 for a in together)  # stopped at its end token
    # "Here is a green triangle. [IMG0]..[IMG3]" is 12 tokens: the limit counts the run as one
    assert [r.modality for r in model.find_runs(together[2].ids)] == ["image"] and together[2].generated == 12


@pytest.mark.parametrize("limit", [3, 9, 14, 40])
@torch.inference_mode()
def test_the_token_limit_counts_a_run_as_one_token_and_never_cuts_it(tiny, limit):
    model = tiny.model
    fixed = {t for ids in model.signal.ids.values() for t in ids[1:]}
    starts = {ids[0] for ids in model.signal.ids.values()}
    options = dict(max_new_tokens=limit, temperature=0.0, seed=0, allowed={"image", "audio", "video"})
    prompt = "please make a short movie of a blue circle moving down and I want to listen to a short pulsing beeps"
    one = model.generate(_prompt(model, prompt), **options)
    looped = model.generate_batch([_prompt(model, prompt), _prompt(model, "hi")], **options)[0]
    assert one.ids == looped.ids
    chosen = sum(t not in fixed for t in one.ids)
    assert chosen == limit or (chosen < limit and one.generated == len(one.ids) + 1)  # the limit, or its end token
    assert len(model.find_runs(one.ids)) == sum(t in starts for t in one.ids)  # every run started is whole
    if limit == 40:
        assert sorted(r.modality for r in model.find_runs(one.ids)) == ["audio", "video"], model.tokenizer.decode(one.ids)


def test_chat_batch_shares_one_generate_call_and_answers_as_alone(tiny, monkeypatch):
    prompts = ["What is the capital of France?", "draw a red circle", "play a rising tone"]
    alone = [tiny.chat(p, seed=i, **FAST) for i, p in enumerate(prompts)]
    calls = []
    generate = tiny.model.llm.generate
    monkeypatch.setattr(tiny.model.llm, "generate", lambda *a, **k: calls.append(k["inputs_embeds"].shape[0])
                        or generate(*a, **k))
    together = tiny.chat_batch([ChatRequest(p, options=dict(seed=i, **FAST)) for i, p in enumerate(prompts)])
    assert calls == [3]
    for a, b in zip(alone, together):
        assert a.trace.raw_reply == b.trace.raw_reply and a.text == b.text
        assert [x.meta["seed"] for x in a.artifacts] == [x.meta["seed"] for x in b.artifacts]

    calls.clear()  # sampled requests keep their own seeds: each goes alone
    tiny.chat_batch([ChatRequest(p, options=dict(temperature=0.7, **FAST)) for p in prompts[:2]])
    assert set(calls) == {1} and len(calls) >= 2


def test_merged_lora_gives_the_same_logits_and_training_unmerges_it(tiny_backbone_config):
    """Merging the adapter for inference changes no output; train() takes it apart again, so
    training sees (and saves) the adapter as it was."""
    config = tiny_backbone_config
    app = AnyGPT.from_config(config.model_copy(update={"lora": config.lora.model_copy(update={"enabled": True})}))
    model = app.model
    with torch.no_grad():  # a non-zero adapter, so merging changes the base weights
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    layer = next(m for n, m in model.llm.named_modules() if n.endswith("q_proj") and hasattr(m, "base_layer"))
    base = layer.base_layer.weight.clone()
    embeds = _prompt(model, "hello there")
    with torch.inference_mode():
        before = model.llm(inputs_embeds=embeds).logits
        model.merge_lora()
        model.merge_lora()  # idempotent
        after = model.llm(inputs_embeds=embeds).logits
    assert layer.merged and not torch.equal(layer.base_layer.weight, base)
    assert torch.allclose(before, after, atol=1e-4)
    model.train()
    assert not layer.merged and torch.allclose(layer.base_layer.weight, base, atol=1e-6)
    model.eval()


@pytest.mark.parametrize("kind", ["text", "image"])
def test_trace_counts_the_tokens_the_llm_wrote(tiny, kind):
    r = tiny.chat("draw a red circle" if kind == "image" else "What is the capital of France?",
                  outputs=("image",) if kind == "image" else (), **FAST)
    written = tiny.model.tokenizer(r.trace.raw_reply, add_special_tokens=False).input_ids
    assert r.trace.generated_tokens in (len(written), len(written) + 1)  # + its end token, unless cut at the limit


@pytest.mark.parametrize("prompt, max_new_tokens", [
    ("animate a blue square moving right", 48),  # a 24-token run, then the end of the reply
    ("animate a blue square moving right", 12),  # the limit falls inside the run: it is written whole
    ("draw a red circle, then play a rising tone", 40),  # generation goes on after a run
])
@torch.inference_mode()
def test_runs_written_in_one_step_equal_the_token_by_token_loop(tiny, prompt, max_new_tokens):
    """`generate` (one prompt: each run in one forward) against the same prompt in a padded batch
    (HF's loop, a token a step): the same tokens, the same hidden states."""
    model = tiny.model
    options = dict(max_new_tokens=max_new_tokens, temperature=0.0, seed=0, allowed={"image", "audio", "video"})
    one = model.generate(_prompt(model, prompt), **options)
    looped = model.generate_batch([_prompt(model, prompt), _prompt(model, "hi")], **options)[0]
    assert one.ids == looped.ids and one.generated == looped.generated
    assert one.hidden.shape == looped.hidden.shape
    assert torch.allclose(one.hidden, looped.hidden, atol=1e-4)
    if max_new_tokens in (48, 12):
        assert [r.modality for r in model.find_runs(one.ids)] == ["video"], model.tokenizer.decode(one.ids)


@torch.inference_mode()
def test_the_run_limit_holds_across_runs_written_in_one_step(tiny, monkeypatch):
    model = tiny.model
    monkeypatch.setattr(model.config, "max_outputs_per_reply", 1)
    options = dict(max_new_tokens=40, temperature=0.0, seed=0, allowed={"image", "audio"})
    prompt = "draw a red circle, then play a rising tone"  # asks for two
    one = model.generate(_prompt(model, prompt), **options)
    looped = model.generate_batch([_prompt(model, prompt), _prompt(model, "hi")], **options)[0]
    assert len(model.find_runs(one.ids)) == 1 and one.ids == looped.ids


def test_streamed_words_are_the_reply_when_runs_are_written_in_one_step(tiny):
    pieces = []
    r = tiny.chat("draw a red circle, then play a rising tone", on_text=pieces.append, max_new_tokens=40,
                  num_inference_steps=2)
    assert len(r.trace.signal_runs) == 2 and len(pieces) > 1
    assert " ".join("".join(pieces).split()) == " ".join(r.text.split())


@torch.inference_mode()
def test_a_conversation_goes_through_the_llm_once(tiny):
    """The next turn starts from the KV cache of the turns before it: only its new tokens are
    run through the LLM, and the reply equals the one computed from scratch."""
    model = tiny.model
    options = dict(max_new_tokens=24, temperature=0.0, seed=0, allowed={"image"})
    first = [Turn("user", "draw a red circle")]
    reply = model.generate(_prompt(model, first[0].text), **options)
    history = first + [Turn("assistant", model.tokenizer.decode(reply.ids)), Turn("user", "what colour was it?")]
    prompt = model.prepare_inputs_labels([history]).inputs_embeds

    lengths = []
    norm = model.llm.get_base_model().model.norm
    hook = norm.register_forward_hook(lambda m, a, o: lengths.append(a[0].shape[1]))
    try:
        warm = model.generate(prompt, **options)
        prefill_warm = lengths[0]
        lengths.clear()
        model.forget_prefix()
        cold = model.generate(prompt, **options)
        prefill_cold = lengths[0]
    finally:
        hook.remove()
    assert prefill_cold == prompt.shape[1]  # from scratch: the whole conversation
    assert prefill_warm <= prompt.shape[1] - len(model.tokenize(first)) + 1  # warm: little more than the new turn
    assert warm.ids == cold.ids
    assert torch.allclose(warm.hidden, cold.hidden, atol=1e-4)
