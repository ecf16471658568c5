"""NExT-GPT's released delta checkpoint, loaded unchanged (issue 9).

The real `nextgpt_7b_tiva_v0/pytorch_model.pt` needs Vicuna-7B and friends, so these tests build
a scaled-down stand-in with the same key names and layout (hidden 64 instead of 4096, projector
d_model 32 instead of 512, LoRA rank 4 instead of 32, decoders' conditioning 32 wide), saved the
way NExT-GPT saves it (`torch.save` of a flat dict of tensors), and load it through the real path.
The expected place of every tensor is written out here independently of `anygpt.nextgpt.KEY_MAP`,
so a wrong entry in the table fails a test instead of being checked against itself.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from anygpt import AnyGPT, ConfigError, Turn
from apps.cli import app as cli
from anygpt.config import AnyGPTConfig, EncoderSettings, LLMConfig, LoraSettings, ProjectorSettings, tiny_preset
from anygpt.nextgpt import (NextGPTWarning, frozen_parts_config, load_nextgpt, load_state, nextgpt_added_tokens,
                            parse_keys)

HIDDEN, D_MODEL, FF, LAYERS, RANK = 64, 32, 64, 2, 4
OUTPUTS = {"image": ("gen_text_hidden_fcs", (77, 32)), "video": ("gen_text_hidden_fcs_video", (77, 32)),
           "audio": ("gen_text_hidden_fcs_audio", (1, 32))}
# every output modality once, at the tiny decoders' smallest sizes: the random LLM may write no run of
# its own (outputs=()), so each comes from a forced run, in order
ALL = dict(force=("image", "audio", "video"), outputs=(), max_new_tokens=4, num_inference_steps=2, seed=5, height=32, width=32,
           num_frames=2, audio_length_in_s=0.5)
DRIFTED_LM_HEAD_ROWS = [3, 10, 400]


class _LegacyTextFcLayer(nn.Module):
    """NExT-GPT's TextFcLayer in mode 'transformer' (code/model/layers.py), written from its description
    with the sizes scaled down: the attribute names give the checkpoint's key names."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, D_MODEL)
        self.tfm = nn.Transformer(batch_first=True, norm_first=True, d_model=D_MODEL, num_encoder_layers=LAYERS,
                                  num_decoder_layers=LAYERS, dim_feedforward=FF, dropout=0.0, nhead=4)
        self.model = nn.Linear(D_MODEL, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, tokens, D_MODEL))


@pytest.fixture(scope="module")
def legacy(tiny, tmp_path_factory):
    """(checkpoint folder, its state, the config of the frozen stand-ins, base vocabulary size)."""
    root = tmp_path_factory.mktemp("nextgpt")
    tokenizer = tiny.model.tokenizer.__class__.from_pretrained(tiny.model.tokenizer.name_or_path)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=512, tie_word_embeddings=False,
                                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")))
    llm.save_pretrained(root / "vicuna")
    tokenizer.save_pretrained(root / "vicuna")
    base = len(tokenizer)

    # The delta, as NextGPTModel.named_parameters() names it in stage 3 (peft 0.3.0 adapter names).
    g = torch.Generator().manual_seed(1)
    state = {"llama_proj.weight": torch.randn(HIDDEN, 64, generator=g),  # tiny ImageBind: 64-d embeddings
             "llama_proj.bias": torch.randn(HIDDEN, generator=g)}
    for prefix, (tokens, dim) in OUTPUTS.values():
        layer = _LegacyTextFcLayer(HIDDEN, dim, tokens)
        state |= {f"{prefix}.0.{k}": torch.randn(v.shape, generator=g) * 0.1 for k, v in layer.state_dict().items()}
    for i in range(2):
        for p in "qkvo":
            stem = f"llama_model.base_model.model.model.layers.{i}.self_attn.{p}_proj"
            state[f"{stem}.lora_A.default.weight"] = torch.randn(RANK, HIDDEN, generator=g) * 0.1
            state[f"{stem}.lora_B.default.weight"] = torch.randn(HIDDEN, RANK, generator=g) * 0.1
    n_added = len(nextgpt_added_tokens())
    embed = torch.cat([llm.model.embed_tokens.weight.detach(), torch.randn(n_added, HIDDEN, generator=g)])
    lm_head = torch.cat([llm.lm_head.weight.detach(), torch.randn(n_added, HIDDEN, generator=g)])
    lm_head[DRIFTED_LM_HEAD_ROWS] += 1.0  # NExT-GPT's training may have moved base rows too
    state["llama_model.base_model.model.model.embed_tokens.weight"] = embed
    state["llama_model.base_model.model.lm_head.weight"] = lm_head
    (root / "nextgpt_7b_tiva_v0").mkdir()
    torch.save(state, root / "nextgpt_7b_tiva_v0" / "pytorch_model.pt")

    # the in-code tiny decoders (path None: a CLIP text encoder, conditioning as in OUTPUTS)
    decoders = {m: d.model_copy(update={"path": None, "num_inference_steps": 2, "conditioning": OUTPUTS[m][1]})
                for m, d in tiny_preset().decoders.items()}
    config = AnyGPTConfig(name="nextgpt-stand-in", llm=LLMConfig(path=str(root / "vicuna")),
                          encoder=EncoderSettings(kind="tiny"), decoders=decoders,
                          projector=ProjectorSettings(heads=4),  # the other sizes are read from the tensors
                          lora=LoraSettings(enabled=False, alpha=32))
    config.save(root / "config.json")
    return root / "nextgpt_7b_tiva_v0", state, config, base


@pytest.fixture(scope="module")
def loaded(legacy):
    folder, _, config, _ = legacy
    with pytest.warns(NextGPTWarning, match=rf"{len(DRIFTED_LM_HEAD_ROWS)} of \d+ base-vocabulary rows of .*lm_head"):
        return load_nextgpt(folder, config=config)[0]


@pytest.fixture(scope="module")
def reply(loaded):
    """One request through the loaded legacy checkpoint, forcing a run of every modality's signal tokens."""
    return loaded.chat("draw", **ALL)


def _expected_places(state: dict, base: int) -> dict[str, str]:
    """Each direct legacy key -> the AnyGPTModel parameter it must end up in (written by hand)."""
    places = {"llama_proj.weight": "input_projector.proj.weight", "llama_proj.bias": "input_projector.proj.bias"}
    for modality, (prefix, _) in OUTPUTS.items():
        places |= {k: f"output_projectors.{modality}.{k.removeprefix(prefix + '.0.')}"
                   for k in state if k.startswith(prefix + ".0.")}
    places |= {k: "llm." + k.removeprefix("llama_model.") for k in state if ".lora_" in k}
    return places


def test_every_legacy_tensor_lands_in_place_and_each_decoder_is_reached(legacy, loaded, reply):
    """No legacy tensor is left over, no trained part of the model is left at its fresh value, and the
    values are the checkpoint's: the signal rows by token NAME (the two vocabularies order them differently)."""
    _, state, _, base = legacy
    model = loaded.model
    params = dict(model.named_parameters())
    places = _expected_places(state, base)
    tables = {"llama_model.base_model.model.model.embed_tokens.weight": model.llm.get_input_embeddings().weight,
              "llama_model.base_model.model.lm_head.weight": model.llm.get_output_embeddings().weight}
    assert set(places) | set(tables) == set(state)  # every legacy key has a place
    trained = {n for n in params if n.startswith(("input_projector.", "output_projectors.")) or ".lora_" in n}
    assert set(places.values()) == trained  # every trained tensor of the model is filled
    for key, name in places.items():
        assert torch.equal(params[name].detach(), state[key]), key

    legacy_row = {t: base + k for k, t in enumerate(nextgpt_added_tokens())}
    for key, weight in tables.items():
        for modality, tokens in model.signal.tokens.items():
            for token, row in zip(tokens, model.signal.ids[modality]):
                assert torch.equal(weight[row], state[key][legacy_row[token]]), (key, token)
    assert [len(t) for t in model.signal.tokens.values()] == [4, 8, 24]  # image, audio, video
    assert loaded.trained and loaded.config.lora.enabled and loaded.config.lora.r == RANK
    p = loaded.config.projector
    assert (p.d_model, p.feedforward, p.encoder_layers, p.decoder_layers) == (D_MODEL, FF, LAYERS, LAYERS)

    assert sorted(a.meta["modality"] for a in reply.artifacts) == ["audio", "image", "video"]
    assert [run["tokens"] for run in reply.trace.signal_runs] == [list(t) for t in model.signal.tokens.values()]


def test_converted_folder_is_safetensors_and_gives_identical_outputs(legacy, reply, tmp_path):
    """`anygpt convert-nextgpt` writes a save_pretrained folder; loading it needs no pickle and gives
    the same text, pixels, waveform and frames for the same seed as loading the legacy file."""
    folder, _, _, _ = legacy
    out = tmp_path / "converted"
    result = CliRunner().invoke(cli, ["convert-nextgpt", str(folder / "pytorch_model.pt"), "--config",
                                      str(folder.parent / "config.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not carried" in result.output and "<Img>" in result.output  # the wrapper rows are reported
    assert {f.name for f in out.iterdir()} == {"config.json", "anygpt.safetensors", "lora"}
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    assert load_file(out / "anygpt.safetensors")["signal_rows.input"].shape == (4 + 8 + 24 + 1, HIDDEN)

    again = AnyGPT.from_pretrained(out)
    r1, r2 = reply, again.chat("draw", **ALL)
    assert r1.text == r2.text and r1.trace.raw_reply == r2.trace.raw_reply
    assert np.array_equal(np.asarray(r1.images[0].image), np.asarray(r2.images[0].image))
    assert np.array_equal(r1.audios[0].waveform, r2.audios[0].waveform)
    assert np.array_equal(r1.videos[0].frames, r2.videos[0].frames)


_RAN: list[str] = []


def _record(what: str) -> None:
    _RAN.append(what)


class _Payload:
    """Unpickling this calls _record: what a malicious checkpoint would do with os.system instead."""

    def __reduce__(self):
        return _record, ("payload ran",)


@pytest.mark.parametrize("content, message", [
    ({"llama_proj.weight": torch.zeros(2, 2), "extra": _Payload()}, "weights_only"),
    ({"llama_proj.weight": torch.zeros(2, 2), "step": 3}, "not a plain dict of tensors"),
    ([torch.zeros(2)], "not a dict of tensors"),
])
def test_anything_but_a_plain_tensor_dict_is_refused(legacy, tmp_path, content, message):
    """torch.load(weights_only=True): a pickled object is refused, never constructed, by the API and the CLI."""
    folder, _, config, _ = legacy
    file = tmp_path / "pytorch_model.pt"
    torch.save(content, file)
    with pytest.raises(ConfigError, match=message):
        load_nextgpt(file, config=config)
    result = CliRunner().invoke(cli, ["convert-nextgpt", str(file), "--config", str(folder.parent / "config.json"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.output
    assert _RAN == [] and not (tmp_path / "out").exists()


def test_layout_problems_name_the_tensor(legacy, loaded, tmp_path):
    """Keys outside NExT-GPT's layout and shapes that do not fit the frozen parts are clear errors."""
    folder, state, config, _ = legacy
    file = tmp_path / "pytorch_model.pt"
    torch.save(state | {"visual_encoder.trunk.weight": torch.zeros(1)}, file)
    with pytest.raises(ConfigError, match=r"outside NExT-GPT's delta layout.*visual_encoder\.trunk\.weight"):
        load_nextgpt(file, config=config)
    torch.save(state | {"gen_text_hidden_fcs_audio.0.model.weight": torch.zeros(16, D_MODEL)}, file)
    with pytest.raises(ConfigError, match=r"gen_text_hidden_fcs_audio\.0\.model\.weight has shape \[16, 32\]"):
        load_nextgpt(file, config=config)
    bad = {"llama_proj.weight": torch.zeros(HIDDEN, 1024)}  # ImageBind-huge width on the tiny encoder
    with pytest.raises(ConfigError, match=r"llama_proj\.weight has shape \[64, 1024\] but input_projector"):
        load_state(loaded.model, bad, parse_keys(bad), file)
    with pytest.raises(ConfigError, match="--vicuna, --imagebind"):
        load_nextgpt(folder)
    with pytest.raises(ConfigError, match="not both"):
        load_nextgpt(folder, config=config, vicuna=folder)


def test_paths_give_nextgpt_settings(tmp_path):
    """The five paths fill the nextgpt-7b preset: NExT-GPT's decoders' conditioning, LoRA alpha 32, 4 heads."""
    paths = {k: tmp_path / k for k in ("vicuna", "imagebind", "sd", "audioldm", "zeroscope")}
    for p in paths.values():
        p.mkdir()
    config = frozen_parts_config(**paths)
    assert config.llm.path == str(paths["vicuna"].resolve()) and config.encoder.kind == "huge"
    assert {m: tuple(d.conditioning) for m, d in config.decoders.items()} == {
        "image": (77, 768), "audio": (1, 512), "video": (77, 1024)}
    assert config.decoders["video"].path == str(paths["zeroscope"].resolve())
    assert config.lora.alpha == 32 and config.projector.heads == 4


def test_tokenizer_without_chat_template_gets_nextgpts_prompt(legacy, tmp_path):
    """Vicuna v0 predates chat templates: the loaded instance then renders NExT-GPT's prompt
    ('### Human: ...\\n### Assistant:'), and the report says the LLM folder lacks one."""
    folder, _, config, _ = legacy
    vicuna = tmp_path / "vicuna"
    shutil.copytree(config.llm.path, vicuna)
    (vicuna / "chat_template.jinja").unlink()
    plain = config.model_copy(update={"llm": config.llm.model_copy(update={"path": str(vicuna)})})
    with pytest.warns(NextGPTWarning, match="no chat template"):
        app, report = load_nextgpt(folder, config=plain)
    assert report.chat_template_set and "chat template" in report.summary()
    text = app.model.render([Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "draw a cat")])
    bos = app.model.tokenizer.bos_token
    assert text == f"{bos}### Human: hi\n### Assistant: hello\n### Human: draw a cat\n### Assistant:"
