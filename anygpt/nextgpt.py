"""Load NExT-GPT's released delta checkpoint (`nextgpt_7b_tiva_v0/pytorch_model.pt`) unchanged.

NExT-GPT ships only what it trained: a flat `torch.save` of every parameter that had
`requires_grad` (plus its projectors), taken from `NextGPTModel.named_parameters()`. The frozen
parts come from their own releases: Vicuna-7B v0, ImageBind-huge, SD v1.5, AudioLDM-l-full and
ZeroScope-v2-576w. `load_nextgpt` reads that file with `torch.load(weights_only=True)` (a
pickled object is refused, never executed), builds this project's model for the frozen parts
and copies each legacy tensor to its place by the one table below, `KEY_MAP`.
`convert_nextgpt` (the `anygpt convert-nextgpt` command) writes the result as a
`save_pretrained` folder, so later loads read safetensors and need no pickle at all.

Sources read (github.com/NExT-GPT/NExT-GPT: the original `code/` tree, kept as NExT-GPT-Lagacy/ by the rewrite):
  code/model/anyToImageVideoAudio.py  NextGPTModel: attribute names (llama_proj, gen_text_hidden_fcs,
                                      gen_text_hidden_fcs_video, gen_text_hidden_fcs_audio, llama_model),
                                      the added tokens and their order, the output sizes 768/1024/512
                                      with 77/77/1 query tokens, generation and decoding
  code/model/layers.py                TextFcLayer(mode='transformer'): fc, tfm (nn.Transformer d_model 512,
                                      nhead 4, 4+4 layers, FF 2048, dropout 0, batch_first, norm_first),
                                      model, query_embs [1, tokens, 512]; input = hidden state + input embedding
  code/model/agent.py                 save_model: requires_grad parameters + projector keys, file pytorch_model.pt
                                      (with the tokenizer saved beside it); load_parameters: the stage-2
                                      spelling `llama_model.model.embed_tokens.weight` of the same rows
  code/config/stage_3.yaml            LoRA r=32, alpha=32, dropout 0.1; stage_2.yaml: freeze_lm (no peft wrap)
  NExT-GPT-Lagacy/code/config/base.yaml  4 [IMG], 24 [VID], 8 [AUD] tokens; text_emb_to_*_layers: [-1];
                                      text_fc_to_*_mode: transformer; vicuna 7b_v0, imagebind huge
  NExT-GPT-Lagacy/requirements.txt    peft==0.3.0 (adapter-named LoRA keys `lora_A.default.weight`)
  code/demo_app.py, code/inference.py load_state_dict(delta_ckpt, strict=False); prompt and stop ids

Prompt template and stop string (demo_app.py, inference.py, prepare_generation_embedding):

  <s>### Human: {user}\\n### Assistant: {reply}\\n### Human: {user}\\n### Assistant:

  i.e. BOS, then each user turn as `### Human: ...` and each reply as `### Assistant: ...`, one per
  line, ending with `### Assistant:` for the model to continue. NExT-GPT stops when the reply ends
  with the stop string `###` (LLaMA ids [835] or [2277, 29937]: `stops_id` in demo_app.py). Media
  sit in the user turn as `<Img>` + one projected ImageBind embedding + `</Img>` (`<Vid>`/`<Aud>` in
  the demo). `CHAT_TEMPLATE` is that template for `tokenizer.apply_chat_template`; it is set on
  the loaded tokenizer when the LLM folder has none (Vicuna v0 predates chat templates).
  AnyGPT does not use that stop string: its generation stops at the LLM's end-of-sequence token.

What is deliberately not carried over (each is reported, see `NextGPTReport`):
  * the rows of NExT-GPT's six wrapper tokens `<Img> </Img> <Vid> </Vid> <Aud> </Aud>`: AnyGPT
    splices media at its own placeholder and writes wrappers as text (`config.media_wrap`);
  * base-vocabulary rows of `embed_tokens` / `lm_head`: NExT-GPT saved the whole resized tables.
    Where they equal the LLM's own rows nothing is lost; rows that differ are counted and
    warned about, because AnyGPT's weights keep only the rows of its added tokens.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anygpt.config import AnyGPTConfig, ProjectorSettings, nextgpt_7b_preset
from anygpt.errors import ConfigError
from anygpt.pipeline import AnyGPT

if TYPE_CHECKING:
    from anygpt.model import AnyGPTModel

CHECKPOINT_FILE = "pytorch_model.pt"  # agent.py save_model
ADDED_TOKENS_FILE = "added_tokens.json"  # written beside it by llama_tokenizer.save_pretrained, when kept

# The one mapping table: legacy key (regular expression, full match) -> AnyGPT name (its groups
# substituted). Names on the right are keys of `AnyGPTModel.trainable_state()` or, for LoRA,
# parameter names of `AnyGPTModel` (its `llm` is a peft model).
KEY_MAP: dict[str, str] = {
    # Input projector. anyToImageVideoAudio.py: `self.llama_proj = nn.Linear(visual_hidden_size 1024,
    # hidden_size 4096)`; projectors.py InputProjector.proj has the same shape.
    r"llama_proj\.(weight|bias)": r"input_projector.proj.\1",
    # Output projectors. anyToImageVideoAudio.py: one nn.ModuleList per modality holding a
    # TextFcLayer per entry of text_emb_to_*_layers (base.yaml: [-1], so only index 0, which is
    # also the `[-1]` used at generation). layers.py names fc / tfm / model / query_embs exactly as
    # projectors.py OutputProjector does, nn.Transformer with batch_first=True in both, and
    # query_embs is [1, tokens, d_model] in both: the rest of the key is copied unchanged.
    # Image 77 x 768 (SD v1.5), video 77 x 1024 (ZeroScope), audio 1 x 512 (AudioLDM).
    r"gen_text_hidden_fcs\.0\.(.+)": r"output_projectors.image.\1",
    r"gen_text_hidden_fcs_video\.0\.(.+)": r"output_projectors.video.\1",
    r"gen_text_hidden_fcs_audio\.0\.(.+)": r"output_projectors.audio.\1",
    # LoRA (stage_3.yaml r=32, alpha=32; anyToImageVideoAudio.py target_modules q,k,v,o). The delta
    # holds `llama_model` + peft's names; peft 0.3.0 (requirements.txt) spells the adapter
    # `lora_A.default.weight`, older peft `lora_A.weight`: both are accepted.
    r"llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.lora_([AB])(?:\.default)?"
    r"\.weight": r"llm.base_model.model.model.layers.\1.self_attn.\2_proj.lora_\3.default.weight",
    # Token tables. resize_token_embeddings after get_peft_model leaves the whole new tables
    # trainable, so the delta holds all rows (stage 3: under base_model.model; stage 2, no peft:
    # `llama_model.model.embed_tokens.weight`, cf. agent.py load_parameters). Only the rows of the
    # signal tokens are taken, by token NAME: NExT-GPT appends <Img> </Img> [IMG0..3] <Vid> </Vid>
    # [VID0..23] <Aud> </Aud> [AUD0..7] after the LLM's vocabulary (_add_image/video/audio_token),
    # AnyGPT its signal tokens in config order and then its media placeholder.
    r"llama_model\.(?:base_model\.model\.)?model\.embed_tokens\.weight": "signal_rows.input",
    r"llama_model\.(?:base_model\.model\.)?lm_head\.weight": "signal_rows.output",
}

# NExT-GPT's added tokens, in the order it adds them (modality, wrapper stem, signal prefix).
_NEXTGPT_ORDER = (("image", "Img", "IMG"), ("video", "Vid", "VID"), ("audio", "Aud", "AUD"))
NEXTGPT_SIGNAL_TOKENS = {"image": 4, "video": 24, "audio": 8}  # base.yaml num_gen_*_tokens
NEXTGPT_LORA_ALPHA = 32  # stage_3.yaml (alpha is not in the weights; r is, and is read from them)
NEXTGPT_HEADS = 4  # layers.py nhead (not in the weights either)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}### Human: {{ message['content'] }}\n"
    "{% else %}### Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:{% endif %}"
)


def nextgpt_added_tokens(counts: dict[str, int] | None = None) -> list[str]:
    """NExT-GPT's added tokens in the order its tokenizer got them (rows base_vocab + 0, + 1, ...)."""
    counts = counts or NEXTGPT_SIGNAL_TOKENS
    tokens = []
    for modality, stem, prefix in _NEXTGPT_ORDER:
        tokens += [f"<{stem}>", f"</{stem}>"] + [f"[{prefix}{i}]" for i in range(counts.get(modality, 0))]
    return tokens


class NextGPTWarning(UserWarning):
    """Something of the checkpoint that AnyGPT does not carry over, or a setting filled in for it."""


@dataclass
class NextGPTReport:
    """What a load did with each legacy tensor."""

    checkpoint: str
    mapped: dict[str, str] = field(default_factory=dict)  # legacy key -> AnyGPT name
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # signal token -> (legacy row, AnyGPT row)
    rows_not_carried: list[str] = field(default_factory=list)  # NExT-GPT's wrapper tokens
    base_rows_changed: dict[str, int] = field(default_factory=dict)  # legacy key -> rows differing from the LLM
    chat_template_set: bool = False  # the LLM's tokenizer had none; NExT-GPT's was set on the loaded instance

    def summary(self) -> str:
        lines = [f"{len(self.mapped)} tensors mapped, {len(self.rows)} signal-token rows per table"]
        if self.rows_not_carried:
            lines.append(f"not carried: rows of {' '.join(self.rows_not_carried)} (media wrappers are text here)")
        for key, n in self.base_rows_changed.items():
            lines.append(f"warning: {n} base-vocabulary rows of {key} differ from the LLM's and are not carried")
        if self.chat_template_set:
            lines.append("warning: the LLM's tokenizer has no chat template; to chat with the converted folder, put "
                         "anygpt.nextgpt.CHAT_TEMPLATE in the LLM folder as chat_template.jinja")
        return "\n".join(lines)


# -- reading ---------------------------------------------------------------------------------------

def checkpoint_file(path: str | os.PathLike) -> Path:
    """The legacy file: PATH itself, or PATH/pytorch_model.pt for the released folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"NExT-GPT checkpoint not found: {path}")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The legacy `torch.save` file as a plain {name: tensor} dict, loaded with weights_only=True.

    weights_only lets the unpickler build tensors and plain containers only, so a file that
    carries any other object (which a full unpickle would construct, running its code) is refused.
    """
    file = checkpoint_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{file} is not a plain dict of tensors and was refused (loaded with weights_only=True, "
                          f"which never runs pickled code): {first}") from None
    except Exception as e:  # not a torch.save file at all: truncated, safetensors, text, ...
        raise ConfigError(f"cannot read {file} as a torch.save checkpoint (weights_only=True): "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{file} holds a {type(state).__name__}, not a dict of tensors")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ConfigError(f"{file} is not a plain dict of tensors: entries {bad[:5]} are not name -> tensor")
    return dict(state)


@dataclass
class _Layout:
    """The legacy keys sorted by where they go: `direct` (copied whole) and the two token tables."""

    direct: dict[str, str]  # legacy key -> AnyGPT name
    tables: dict[str, str]  # "signal_rows.input" / "signal_rows.output" -> legacy key


def parse_keys(state: dict[str, torch.Tensor], source: str = "checkpoint") -> _Layout:
    """Match every legacy key against KEY_MAP; a key that matches nothing is an error (not NExT-GPT's layout)."""
    compiled = [(re.compile(p), t) for p, t in KEY_MAP.items()]
    direct, tables, unknown = {}, {}, []
    for key in state:
        for pattern, target in compiled:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            name = m.expand(target)
            if name.startswith("signal_rows."):
                if name in tables:
                    raise ConfigError(f"{source} holds both {tables[name]} and {key}")
                tables[name] = key
            else:
                direct[key] = name
            break
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{source} has {len(unknown)} keys outside NExT-GPT's delta layout (code/ tree, stage 2 "
                          f"or 3, text_emb_to_*_layers [-1], mode transformer): {sorted(unknown)[:8]}")
    if not direct and not tables:
        raise ConfigError(f"{source} holds no NExT-GPT tensors")
    return _Layout(direct, tables)


# -- the config ------------------------------------------------------------------------------------

def frozen_parts_config(*, vicuna, imagebind, sd, audioldm, zeroscope) -> AnyGPTConfig:
    """The `nextgpt-7b` preset with its five frozen parts given as paths (each checked to exist)."""
    given = {"vicuna": vicuna, "imagebind": imagebind, "sd": sd, "audioldm": audioldm, "zeroscope": zeroscope}
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"NExT-GPT's frozen parts are needed: missing {', '.join('--' + k for k in missing)} "
                          "(or pass a config that names them)")
    paths = {}
    for k, v in given.items():
        p = Path(v).expanduser().resolve()
        if not p.exists():
            raise ConfigError(f"--{k}: not found: {p}")
        paths[k] = str(p)
    config = nextgpt_7b_preset(**paths)
    lora = config.lora.model_copy(update={"alpha": NEXTGPT_LORA_ALPHA})
    projector = config.projector.model_copy(update={"heads": NEXTGPT_HEADS})
    return config.model_copy(update={"name": "nextgpt-7b-tiva-v0", "lora": lora, "projector": projector})


_PROJ_PREFIX = {"image": "gen_text_hidden_fcs.0.", "video": "gen_text_hidden_fcs_video.0.",
                "audio": "gen_text_hidden_fcs_audio.0."}


def fit_config(config: AnyGPTConfig, state: dict[str, torch.Tensor], layout: _Layout) -> AnyGPTConfig:
    """The config with what the checkpoint says: NExT-GPT's signal-token counts, the projector sizes and the
    LoRA rank read from the tensors (the projectors' output shapes are checked against the decoders)."""
    # NExT-GPT's token counts are fixed by its code (base.yaml), and its row order depends on them
    update: dict = {"signal_tokens": {m: NEXTGPT_SIGNAL_TOKENS[m] for m in config.signal_tokens}}
    shapes = {}
    for modality, prefix in _PROJ_PREFIX.items():
        keys = {k[len(prefix):]: k for k in state if k.startswith(prefix)}
        if not keys:
            continue
        if modality not in config.decoders or modality not in config.signal_tokens:
            raise ConfigError(f"the checkpoint has an output projector for {modality} ({prefix}*) but the config "
                              f"has no {modality} decoder and signal tokens")
        for needed in ("fc.weight", "model.weight", "query_embs", "tfm.encoder.layers.0.linear1.weight"):
            if needed not in keys:
                raise ConfigError(f"{prefix}{needed} is missing: only TextFcLayer(mode='transformer') is supported")
        layers = {side: len({k.split(".")[3] for k in keys if k.startswith(f"tfm.{side}.layers.")})
                  for side in ("encoder", "decoder")}
        shapes[modality] = dict(d_model=state[keys["fc.weight"]].shape[0],
                                feedforward=state[keys["tfm.encoder.layers.0.linear1.weight"]].shape[0],
                                encoder_layers=layers["encoder"], decoder_layers=layers["decoder"])
        tokens, dim = state[keys["query_embs"]].shape[1], state[keys["model.weight"]].shape[0]
        want = tuple(config.decoders[modality].conditioning)
        if tokens != want[0]:
            raise ConfigError(f"{keys['query_embs']} has shape {list(state[keys['query_embs']].shape)}: "
                              f"{tokens} output tokens, but the {modality} decoder takes {want[0]} x {want[1]}")
        if dim != want[1]:
            raise ConfigError(f"{keys['model.weight']} has shape {list(state[keys['model.weight']].shape)}: "
                              f"output dim {dim}, but the {modality} decoder takes {want[0]} x {want[1]}")
    if shapes:
        first_modality, first = next(iter(shapes.items()))
        for modality, s in shapes.items():
            if s != first:
                raise ConfigError(f"output projectors differ in shape ({first_modality}: {first}, {modality}: {s}); "
                                  "AnyGPT uses one projector shape for every modality")
        update["projector"] = ProjectorSettings(heads=config.projector.heads, **first)
    lora_a = [k for k, name in layout.direct.items() if ".lora_A." in name]
    if lora_a:
        ranks = {state[k].shape[0] for k in lora_a}
        if len(ranks) != 1:
            raise ConfigError(f"LoRA tensors disagree on the rank: {sorted(ranks)}")
        modules = sorted({f"{re.search(r'([qkvo])_proj', k).group(1)}_proj" for k in lora_a})
        extra = [m for m in modules if m not in config.lora.target_modules]
        update["lora"] = config.lora.model_copy(update={
            "enabled": True, "r": ranks.pop(),
            "target_modules": list(config.lora.target_modules) + extra})
    else:
        update["lora"] = config.lora.model_copy(update={"enabled": False})
    return config.model_copy(update=update)


# -- copying -------------------------------------------------------------------------------------

def _legacy_rows(table: torch.Tensor, key: str, model: "AnyGPTModel", file: Path) -> dict[str, int]:
    """Legacy row index of each NExT-GPT added token: from added_tokens.json beside the checkpoint when
    it is there, else from NExT-GPT's order after the LLM's own vocabulary."""
    added = file.parent / ADDED_TOKENS_FILE
    if added.is_file():
        try:
            index = {str(k): int(v) for k, v in json.loads(added.read_text()).items()}
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{added} is not a token -> id mapping: {e}") from None
        bad = {t: i for t, i in index.items() if not 0 <= i < table.shape[0]}
        if bad:
            raise ConfigError(f"{added} gives rows {bad} outside {key} ({table.shape[0]} rows)")
        return index
    order = nextgpt_added_tokens()
    expected = model.base_vocab + len(order)
    if table.shape[0] != expected:
        raise ConfigError(f"{key} has {table.shape[0]} rows, but the LLM's vocabulary ({model.base_vocab}) plus "
                          f"NExT-GPT's {len(order)} added tokens make {expected}; is this the Vicuna it was "
                          f"trained on? (an {ADDED_TOKENS_FILE} beside the checkpoint gives the rows explicitly)")
    return {t: model.base_vocab + k for k, t in enumerate(order)}


@torch.no_grad()
def load_state(model: "AnyGPTModel", state: dict[str, torch.Tensor], layout: _Layout, file: Path) -> NextGPTReport:
    """Copy every legacy tensor to its place; every trained part of the model must be filled."""
    report = NextGPTReport(checkpoint=str(file))
    params = dict(model.named_parameters())
    for key, name in layout.direct.items():
        if name not in params:
            raise ConfigError(f"{key} maps to {name}, which this model does not have (LoRA target modules "
                              f"{model.config.lora.target_modules}, outputs {list(model.output_projectors)})")
        target, value = params[name], state[key]
        if tuple(target.shape) != tuple(value.shape):
            raise ConfigError(f"{key} has shape {list(value.shape)} but {name} is {list(target.shape)}")
        target.copy_(value.to(target.dtype))
        report.mapped[key] = name
    trained = [n for n in params if n.startswith(("input_projector.", "output_projectors.")) or ".lora_" in n]
    unfilled = sorted(set(trained) - set(report.mapped.values()))
    if unfilled:
        raise ConfigError(f"the checkpoint does not fill {len(unfilled)} trained tensors: {unfilled[:6]}")

    inp, out = model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings()
    out = out.weight if out is not None else None
    tables = {"signal_rows.input": inp}
    if out is not None and out.data_ptr() != inp.data_ptr():
        tables["signal_rows.output"] = out
    for name, key in layout.tables.items():
        if name not in tables:
            raise ConfigError(f"the checkpoint has {key} but this LLM ties its output embedding to its input one")
    for name, weight in tables.items():
        if name not in layout.tables:
            raise ConfigError(f"the checkpoint has no {name.split('.')[1]} token table "
                              f"({'embed_tokens' if name.endswith('input') else 'lm_head'}.weight)")
        key = layout.tables[name]
        legacy = state[key]
        if legacy.shape[1] != weight.shape[1]:
            raise ConfigError(f"{key} has shape {list(legacy.shape)}: width {legacy.shape[1]}, but the LLM's "
                              f"hidden size is {weight.shape[1]}")
        where = _legacy_rows(legacy, key, model, file)
        for modality, tokens in model.signal.tokens.items():
            for token, row in zip(tokens, model.signal.ids[modality]):
                if token not in where:
                    raise ConfigError(f"{key} has no row for {token} (NExT-GPT has "
                                      f"{NEXTGPT_SIGNAL_TOKENS.get(modality, 0)} {modality} signal tokens)")
                weight[row] = legacy[where[token]].to(weight.dtype)
                report.rows[token] = (where[token], row)
        report.mapped[key] = name
        base = min(model.base_vocab, min(where.values()))
        ours = weight[:base].to(legacy.dtype)
        changed = int((~torch.isclose(legacy[:base], ours, rtol=1e-3, atol=1e-6)).any(dim=1).sum())
        if changed:
            report.base_rows_changed[key] = changed
            warnings.warn(f"{changed} of {base} base-vocabulary rows of {key} differ from the LLM's own; AnyGPT "
                          "keeps only the signal-token rows, so text may differ from NExT-GPT's", NextGPTWarning,
                          stacklevel=3)
    signal = {t for toks in model.signal.tokens.values() for t in toks}
    if layout.tables:
        report.rows_not_carried = [t for t in nextgpt_added_tokens() if t not in signal]
    return report


# -- the entry points ----------------------------------------------------------------------------

def load_nextgpt(checkpoint: str | os.PathLike, *, config: AnyGPTConfig | str | os.PathLike | None = None,
                 vicuna=None, imagebind=None, sd=None, audioldm=None, zeroscope=None,
                 device: str = "cpu") -> tuple[AnyGPT, NextGPTReport]:
    """NExT-GPT's delta checkpoint on top of its frozen parts -> (AnyGPT, what was mapped).

    The frozen parts come either from the five paths (the `nextgpt-7b` preset: Vicuna-7B v0 folder,
    imagebind_huge.pth, SD v1.5, AudioLDM-l-full and ZeroScope-v2-576w diffusers folders) or from
    `config` (an AnyGPTConfig or its file), e.g. scaled-down stand-ins. Either way the projector
    sizes and the LoRA rank are read from the tensors; a shape that does not fit names the tensor.
    """
    file = checkpoint_file(checkpoint)
    state = read_checkpoint(file)
    layout = parse_keys(state, str(file))
    paths = {"vicuna": vicuna, "imagebind": imagebind, "sd": sd, "audioldm": audioldm, "zeroscope": zeroscope}
    if config is not None and any(v is not None for v in paths.values()):
        raise ConfigError("give either a config or the frozen parts' paths, not both")
    if config is None:
        config = frozen_parts_config(vicuna=vicuna, imagebind=imagebind, sd=sd, audioldm=audioldm,
                                     zeroscope=zeroscope)
    elif not isinstance(config, AnyGPTConfig):
        config = AnyGPTConfig.load(config)
    config = fit_config(config, state, layout)
    app = AnyGPT.from_config(config, device=device)
    report = load_state(app.model, state, layout, file)
    app.trained = True
    tokenizer = app.model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
        report.chat_template_set = True
        warnings.warn(f"the LLM's tokenizer ({config.llm.describe()}) has no chat template; NExT-GPT's was set on this "
                      "instance. A converted folder needs it in the LLM folder (chat_template.jinja, or "
                      "chat_template in tokenizer_config.json): anygpt.nextgpt.CHAT_TEMPLATE", NextGPTWarning,
                      stacklevel=2)
    return app, report


def convert_nextgpt(checkpoint: str | os.PathLike, out: str | os.PathLike, **kwargs) -> NextGPTReport:
    """Load the legacy checkpoint (see load_nextgpt) and write it as a save_pretrained folder (safetensors)."""
    app, report = load_nextgpt(checkpoint, **kwargs)
    app.save_pretrained(out)
    return report
