"""The LLM backbone, signal tokens, the signal-run rule and the projectors."""

from __future__ import annotations

import torch

from anygpt.config import tiny_preset
from anygpt.llm import MEDIA_TOKEN, SignalTokens, cache_dir, resolve_gguf
from anygpt.model import SignalRunProcessor
from anygpt.projectors import OutputProjector


def test_gguf_is_cached_as_safetensors(tiny):
    gguf = resolve_gguf(tiny_preset().llm)
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()
    cached = [d for d in (cache_dir() / "llm").iterdir() if d.name.startswith(gguf.stem)]
    assert cached and (cached[0] / "model.safetensors").is_file()
    assert tiny.model.llm.config.hidden_size == 576  # SmolLM2-135M


def test_signal_tokens_are_single_tokens_with_embedding_rows(tiny):
    model = tiny.model
    tok = model.tokenizer
    assert model.signal.tokens["image"] == ("[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]")
    assert len(model.signal.tokens["video"]) == 24 and len(model.signal.tokens["audio"]) == 8
    for m, names in model.signal.tokens.items():
        ids = tok(" ".join(names), add_special_tokens=False).input_ids
        assert [i for i in ids if i in model.signal.ids[m]] == list(model.signal.ids[m])
    assert tok.convert_tokens_to_ids(MEDIA_TOKEN) == model.media_token_id
    assert model.llm.get_input_embeddings().num_embeddings >= len(tok)


def test_signal_run_processor_completes_runs_and_blocks_the_rest():
    signal = SignalTokens(tokens=SignalTokens.names({"image": 3, "audio": 2}),
                          ids={"image": (10, 11, 12), "audio": (20, 21)})
    proc = SignalRunProcessor(signal, allowed={"image"}, banned_ids=[30], max_runs=1)
    scores = torch.zeros(1, 40)
    out = proc(torch.tensor([[5]]), scores.clone())
    assert out[0, 10] == 0 and torch.isinf(out[0, [11, 12, 20, 21, 30]]).all()  # only [IMG0] may start a run
    out = proc(torch.tensor([[5, 10]]), scores.clone())
    assert out[0].argmax() == 11 and torch.isinf(out[0, :11]).all()  # [IMG0] is followed by [IMG1]
    out = proc(torch.tensor([[5, 10, 11, 12]]), scores.clone())
    assert torch.isinf(out[0, 10])  # max_runs reached


def test_output_projector_shapes_follow_the_decoder():
    proj = OutputProjector(llm_dim=16, tokens=77, out_dim=24, d_model=32, heads=4, encoder_layers=1,
                           decoder_layers=1, feedforward=64)
    out = proj(torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    assert out.shape == (2, 77, 24)
    assert {"fc.weight", "query_embs", "model.weight"} <= set(proj.state_dict())  # NExT-GPT's key names
