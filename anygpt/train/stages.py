"""NExT-GPT's three training stages, for any backbone (docs/architecture.md, "Training stages").

1. encoder-side alignment: X -> caption. Trains the input projector (LM loss on the caption).
2. decoder-side alignment: caption -> signal tokens. Trains the signal-token rows and the output
   projectors: LM loss on the signal tokens, plus the MSE between the projector output and the
   decoder's own text encoding of the caption. Decoders stay frozen.
3. instruction tuning: mixed dialogs. LoRA on the LLM, plus projectors and signal-token rows.

Every stage reads a manifest (stage 1-2: the toy world's, or any JSONL of path + caption; stage 3:
dialogs), starts from `init` (a save_pretrained folder, e.g. the previous stage's output) or the
config, and writes `out/model` with `AnyGPT.save_pretrained`; `out/checkpoint` lets it resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anygpt.config import OUTPUT_MODALITIES, AnyGPTConfig
from anygpt.data.dialogs import MAKE, read_dialogs
from anygpt.data.manifest import read_manifest
from anygpt.model import AnyGPTModel, Turn
from anygpt.pipeline import AnyGPT
from anygpt.train.loop import LoopSettings, console, train

DESCRIBE = {"image": ["Describe this picture.", "What is in this image?", "Caption this image."],
            "audio": ["Describe this sound.", "What do you hear?", "Caption this audio clip."],
            "video": ["Describe this clip.", "What happens in this video?", "Caption this video."],
            "depth": ["Describe this depth map.", "What does this depth map show?"],
            "thermal": ["Describe this thermal image."], "imu": ["Describe this motion."]}


@dataclass
class Sample:
    """One training conversation: its turns (assistant turns carry their signal tokens) and the caption
    behind each run of signal tokens, in order."""

    turns: list[Turn]
    outputs: list[tuple[str, str]] = field(default_factory=list)


def stage1_samples(examples: list[dict], rng: np.random.Generator) -> list[Sample]:
    return [Sample([Turn("user", DESCRIBE[e["modality"]][rng.integers(len(DESCRIBE[e["modality"]]))],
                         [(e["modality"], e["path"])]),
                    Turn("assistant", e["caption"])]) for e in examples]


def stage2_samples(model: AnyGPTModel, examples: list[dict], rng: np.random.Generator) -> list[Sample]:
    out = []
    for e in examples:
        m = e["modality"]
        if m not in OUTPUT_MODALITIES or m not in model.output_projectors:
            continue
        asks = MAKE[m]["train"]
        ask = asks[rng.integers(len(asks))].format(desc=e["caption"])
        out.append(Sample([Turn("user", ask), Turn("assistant", model.signal_string(m))], [(m, e["caption"])]))
    return out


def stage3_samples(model: AnyGPTModel, dialogs: list[dict]) -> list[Sample]:
    out = []
    for d in dialogs:
        turns, outputs = [], []
        for t in d["turns"]:
            if t["role"] == "user":
                turns.append(Turn("user", t["text"], [(i["modality"], i["path"]) for i in t.get("media", [])]))
            else:
                runs = [o for o in t.get("outputs", []) if o["modality"] in model.output_projectors]
                text = " ".join([t["text"]] + [model.signal_string(o["modality"]) for o in runs]).strip()
                turns.append(Turn("assistant", text))
                outputs += [(o["modality"], o["caption"]) for o in runs]
        out.append(Sample(turns, outputs))
    return out


def tokenize_sample(model: AnyGPTModel, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (-100 everywhere but the assistant's words, signal tokens and end of turn)."""
    ids, labels, done = [], [], ""
    for k, turn in enumerate(sample.turns):
        if turn.role != "assistant":
            continue
        prefix = model.render(sample.turns[:k], add_generation_prompt=True)
        upto = model.render(sample.turns[:k + 1], add_generation_prompt=False)
        for text, learn in ((prefix[len(done):], False), (upto[len(prefix):], True)):
            piece = model.tokenizer(text, add_special_tokens=False).input_ids
            ids += piece
            labels += piece if learn else [-100] * len(piece)
        done = upto
    return torch.tensor(ids), torch.tensor(labels)


class StageLoss:
    """LM loss over a padded batch, plus the decoder-side MSE at each run of signal tokens."""

    def __init__(self, app: AnyGPT, mse_weight: float):
        self.model, self.app, self.mse_weight = app.model, app, mse_weight
        self._targets: dict[tuple[str, str], torch.Tensor] = {}

    def target(self, modality: str, caption: str) -> torch.Tensor:
        """The decoder's own text encoding of the caption (what its UNet was trained to follow)."""
        key = (modality, caption)
        if key not in self._targets:
            self._targets[key] = self.app.decoder(modality).encode_text([caption])[0].float().cpu()
        return self._targets[key]

    def __call__(self, batch: list[Sample]) -> tuple[torch.Tensor, dict[str, float]]:
        model = self.model
        rows = []
        for s in batch:
            ids, labels = tokenize_sample(model, s)
            media = [item for t in s.turns for item in t.media]
            media_embeds = model.encode_media(media) if media else torch.empty(0, 1)
            rows.append((ids, labels, model.splice_media(ids, media_embeds)[0]))
        length = max(len(r[0]) for r in rows)
        hidden_size = rows[0][2].shape[-1]
        embeds = torch.zeros(len(rows), length, hidden_size)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for b, (ids, lab, emb) in enumerate(rows):
            embeds[b, :len(ids)], labels[b, :len(ids)], mask[b, :len(ids)] = emb, lab, 1
        needs_mse = self.mse_weight > 0 and any(s.outputs for s in batch)
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, output_hidden_states=needs_mse)
        logs = {"lm": out.loss.item()}
        loss = out.loss
        if needs_mse:
            errors = []
            hidden = out.hidden_states[-1]
            for b, (s, (ids, _, _)) in enumerate(zip(batch, rows)):
                runs = model.find_runs(ids.tolist())
                for run, (modality, caption) in zip(runs, s.outputs):
                    pos = torch.tensor(run.positions)
                    pred = model.output_projectors[modality](hidden[b:b + 1, pos], embeds[b:b + 1, pos])[0]
                    errors.append(F.mse_loss(pred, self.target(modality, caption)))
            if errors:
                mse = torch.stack(errors).mean()
                loss = loss + self.mse_weight * mse
                logs["mse"] = mse.item()
        return loss, logs


def _freeze_except(model: AnyGPTModel, stage: int) -> None:
    """Which parameters each stage trains (and, for the signal rows, a hook that keeps the old rows)."""
    model.requires_grad_(False)
    if stage == 1:
        model.input_projector.requires_grad_(True)
        return
    model.output_projectors.requires_grad_(True)
    if stage == 3:
        model.input_projector.requires_grad_(True)
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    base = model.base_vocab
    for emb in {model.llm.get_input_embeddings(), model.llm.get_output_embeddings()} - {None}:
        emb.weight.requires_grad_(True)
        if not getattr(emb.weight, "_anygpt_row_hook", False):
            emb.weight.register_hook(lambda g: torch.cat([torch.zeros_like(g[:base]), g[base:]]))
            emb.weight._anygpt_row_hook = True


def train_stage(stage: int, data: str | Path, out: str | Path, *, config: AnyGPTConfig | None = None,
                init: str | Path | None = None, steps: int = 300, batch_size: int = 8, lr: float = 1e-3,
                grad_accum: int = 1, mse_weight: float = 1.0, seed: int = 0, max_steps: int | None = None,
                limit: int | None = None) -> dict:
    """Run one stage; writes out/model (save_pretrained) and returns the loop's summary."""
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    out = Path(out)
    if init is not None:
        app = AnyGPT.from_pretrained(init)
        if stage == 3 and not app.config.lora.enabled:
            app = _with_lora(app)
    elif config is not None:
        if stage == 3:
            config = config.model_copy(update={"lora": config.lora.model_copy(update={"enabled": True})})
        app = AnyGPT.from_config(config)
    else:
        raise ValueError("train_stage needs a config or an init folder")
    model = app.model
    rng = np.random.default_rng(seed)
    if stage == 3:
        samples = stage3_samples(model, read_dialogs(data))
    else:
        examples = read_manifest(data, check_files=True)
        samples = stage1_samples(examples, rng) if stage == 1 else stage2_samples(model, examples, rng)
    if limit:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"{data}: nothing to train stage {stage} on")
    console.print(f"stage {stage}: {len(samples)} samples")
    _freeze_except(model, stage)
    loss = StageLoss(app, mse_weight if stage > 1 else 0.0)

    def batch_fn(step: int) -> list[Sample]:
        idx = np.random.default_rng([seed, step]).choice(len(samples), min(batch_size, len(samples)), replace=False)
        return [samples[i] for i in idx]

    model.encoder.requires_grad_(False)
    summary = train(f"stage{stage}", model, batch_fn, loss, out,
                    LoopSettings(steps=steps, lr=lr, grad_accum=grad_accum, warmup=min(30, steps // 5 + 1),
                                 save_every=50, seed=seed, max_steps=max_steps))
    app.trained = True
    app.save_pretrained(out / "model")
    return summary


def _with_lora(app: AnyGPT) -> AnyGPT:
    """The same model with a fresh LoRA adapter (stage 3 adds it to a stage-2 folder)."""
    config = app.config.model_copy(update={"lora": app.config.lora.model_copy(update={"enabled": True})})
    fresh = AnyGPT.from_config(config)
    fresh.model.load_trainable_state(app.model.trainable_state())
    return fresh
