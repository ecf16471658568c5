"""Decoder-side alignment that cannot collapse (issue 20), and output-projector training on cached LLM states.

Stages 2-3 used to fit the output projectors with a plain MSE over every position of the
decoder's text encoding. SD's encoding is 77 positions, of which a caption fills about 9; the
other 68 are padding states that barely differ between captions (variance ~0.005 per element
against ~0.3 at the words on the CLIP-conditioned tiny decoders), so predicting the mean is already
a good answer to that loss, and the projectors learnt exactly that: one conditioning for every
request. `alignment_loss` fixes it twice over:

- the MSE is averaged over the caption's real tokens (`caption_mask`), so padding cannot drown
  out the words; padding is fitted as a term of its own (its own average, `pad_weight`), because
  the decoder's cross-attention reads those positions too and, left free, they drift;
- a symmetric InfoNCE term across the batch asks each prediction to be closer to its own target
  than to the other captions' and vice versa. A constant prediction scores log(B) there whatever
  it is, so collapse is never a minimum. The conditionings are centred on the targets' mean
  before the cosine (otherwise the shared BOS and padding states make every pair of captions
  0.95 alike) and compared flattened, position by position, as the decoder reads them (`pool`:
  "mean" takes the masked mean over tokens instead; which of the two best tells captions apart
  across wordings depends on the text encoder: the class of a held-out caption among differently
  worded ones, mean / flat, is 40% / 100% with the CLIP tiny image decoder and 77% / 17% with
  the MiniLM one; flat is what the table below measured).

Measured (image, a fresh projector on 192 cached states of the shipped tiny LLM, targets from the
MiniLM tiny decoder [16 x 384], 600 steps of batch 32; 48 held-out states; top-1 = nearest of the
125 caption encodings is its own, L2; spread = pairwise distances over the targets'):

    loss                                   held-out top-1  spread  real-token MSE  padding MSE
    MSE over all positions (stages 2-3)         27%         0.48       -              -
    MSE over real tokens only                   19%         0.63      0.081*          -
    + InfoNCE 0.1                               69%         0.97      0.049*          -
    + InfoNCE 1.0                               81%         1.04      0.061          0.195
    + InfoNCE 1.0, padding at 0.5 (default)     98%         0.77      0.062          0.047
    (* on the training batches)

Training the projectors inside the stage loop costs one LLM forward per sample and step. Once
the signal-token rows are trained (stage 2's LM loss), the LLM's last-layer states at the signal
positions no longer change, so `collect_signal_states` runs the LLM once over the training
conversations and `train_projector` then fits a projector for thousands of steps on that
`ProjectorCache` in minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anygpt.projectors import pad_rows, set_dropout


# -- the loss ------------------------------------------------------------------------------------

def caption_mask(decoder: Any, captions: Sequence[str]) -> torch.Tensor:
    """[B, tokens] bool: the positions of `decoder.encode_text(captions)` that hold the caption's tokens
    (BOS, words, EOS) rather than padding: the decoder's own `text_mask` (a one-token conditioning,
    AudioLDM's pooled embedding, is all real)."""
    return decoder.text_mask(list(captions)).bool().cpu()


def same_target(target: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """[B, B] bool: rows asking for the same conditioning (the same caption twice in a batch). From
    `groups` (e.g. caption ids) when given, else from exact equality of the targets."""
    if groups is not None:
        return groups[:, None] == groups[None, :]
    flat = target.detach().flatten(1).double()
    d = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    return d <= 1e-9 * (1 + flat.norm(dim=1).max())


def _features(x: torch.Tensor, mask: torch.Tensor, center: torch.Tensor, pool: str) -> torch.Tensor:
    x = (x - center) * mask[..., None]
    if pool == "mean":
        x = x.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    elif pool == "flat":
        x = x.flatten(1)
    else:
        raise ValueError(f"pool must be 'flat' or 'mean', got {pool!r}")
    return F.normalize(x, dim=-1)


def contrastive_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                     temperature: float = 0.1, pool: str = "flat", center: torch.Tensor | None = None,
                     groups: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Symmetric InfoNCE between predictions and targets [B, tokens, dim]: (loss, in-batch top-1).

    Features are (x - center) on the real tokens, flattened (`pool="flat"`) or averaged ("mean"),
    L2-normalised. `center` defaults to the batch's target mean; pass the dataset's (as
    `train_projector` does) for a fixed one. Other rows with the same target (`same_target`) are
    left out of each row's negatives, so two requests for one caption are not pushed apart. A
    constant prediction equal to the centre gives exactly log(B) (all logits equal); any other
    constant gives at least log(B) on average."""
    b = pred.shape[0]
    mask = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device) if mask is None else mask.to(pred)
    target = target.detach().to(pred)
    if center is None:
        center = target.mean(0)
    p, t = _features(pred, mask, center.to(pred), pool), _features(target, mask, center.to(pred), pool)
    logits = p @ t.T / temperature
    same = same_target(target, groups).to(pred.device)
    top1 = float(same[torch.arange(b), logits.detach().argmax(1)].float().mean())
    if b < 2:
        return pred.sum() * 0, top1
    logits = logits.masked_fill(same & ~torch.eye(b, dtype=torch.bool, device=pred.device), float("-inf"))
    labels = torch.arange(b, device=pred.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2, top1


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                   mse_weight: float = 1.0, contrastive_weight: float = 1.0, temperature: float = 0.1,
                   pad_weight: float = 0.5, pool: str = "flat", center: torch.Tensor | None = None,
                   groups: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The output projectors' loss: masked MSE + a contrastive term (see the module for why).

    pred, target: [B, tokens, dim] (target: the decoder's `encode_text` of the caption); mask: [B, tokens],
    True at the caption's real tokens (`caption_mask`; None: all real). The MSE is averaged over each
    row's real tokens, then over rows; `pad_weight` adds the MSE averaged over the padding positions.
    Logs: mse, mse_pad (when weighted), contrastive, top1 (the batch's own-target retrieval), loss."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [B, tokens, dim], got {list(pred.shape)} and "
                         f"{list(target.shape)}")
    real = torch.ones(pred.shape[:2], device=pred.device) if mask is None else mask.to(pred.device, pred.dtype)
    err = (pred - target.to(pred)).pow(2).mean(-1)  # [B, tokens]
    mse = ((err * real).sum(1) / real.sum(1).clamp_min(1)).mean()
    logs = {"mse": mse.item()}
    loss = mse_weight * mse
    if pad_weight:
        pad = 1 - real
        mse_pad = ((err * pad).sum(1) / pad.sum(1).clamp_min(1)).mean()
        loss = loss + pad_weight * mse_pad
        logs["mse_pad"] = mse_pad.item()
    if contrastive_weight:
        contrastive, top1 = contrastive_loss(pred, target, real, temperature=temperature, pool=pool, center=center,
                                             groups=groups)
        loss = loss + contrastive_weight * contrastive
        logs |= {"contrastive": contrastive.item(), "top1": top1}
    logs["loss"] = loss.item()
    return loss, logs


# -- cached LLM states -----------------------------------------------------------------------------

@dataclass
class ProjectorCache:
    """What one output projector trains on, computed once: the LLM's last-layer states at what it reads
    for each run of signal tokens (`SignalRun.reads`) and the decoder's targets. Targets are stored once
    per caption (`index` maps each run to its caption), which also tells the contrastive term which runs
    share a target.

    hidden: [N, n, H]; input_embeds: [n, H] (the signal rows, the same for every run) or [N, n, H];
    index: [N] into targets [U, tokens, dim], masks [U, tokens] and captions [U]; padding: None, or
    [N, n] True where a run that reads fewer than n tokens is padded."""

    hidden: torch.Tensor
    input_embeds: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor
    captions: list[str]
    padding: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index)

    def center(self) -> torch.Tensor:
        """The mean target over the runs [tokens, dim]: a fixed centre for the contrastive term."""
        counts = torch.bincount(self.index, minlength=len(self.targets)).to(self.targets)
        return (self.targets * counts[:, None, None]).sum(0) / counts.sum()

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(hidden, input_embeds, target, mask, groups, padding) of the given rows."""
        embeds = self.input_embeds if self.input_embeds.dim() == 3 else self.input_embeds[None]
        embeds = embeds[rows] if embeds.shape[0] > 1 else embeds.expand(len(rows), -1, -1)
        k = self.index[rows]
        padding = None if self.padding is None else self.padding[rows]
        return self.hidden[rows], embeds, self.targets[k], self.masks[k], k, padding

    @classmethod
    def concat(cls, caches: Sequence["ProjectorCache"]) -> "ProjectorCache":
        """The runs of several caches of one decoder in one cache (a caption in several keeps one target)."""
        hidden, embeds, captions, targets, masks = [], [], {}, [], []
        index = []
        for cache in caches:
            n = cache.hidden.shape[1]
            lengths = [n] * len(cache) if cache.padding is None else (~cache.padding).sum(1).tolist()
            full = cache.input_embeds if cache.input_embeds.dim() == 3 else cache.input_embeds.expand(len(cache), -1, -1)
            hidden += [h[:k] for h, k in zip(cache.hidden, lengths)]
            embeds += [e[:k] for e, k in zip(full, lengths)]
            for k, caption in enumerate(cache.captions):
                if caption not in captions:
                    captions[caption] = len(captions)
                    targets.append(cache.targets[k])
                    masks.append(cache.masks[k])
            index += [captions[cache.captions[k]] for k in cache.index.tolist()]
        h, e, padding = pad_rows(hidden, embeds)
        return cls(hidden=h, input_embeds=e[0] if bool((e == e[:1]).all()) else e, index=torch.tensor(index),
                   targets=torch.stack(targets), masks=torch.stack(masks), captions=list(captions), padding=padding)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"hidden": self.hidden, "input_embeds": self.input_embeds, "index": self.index,
                   "targets": self.targets, "masks": self.masks}
        if self.padding is not None:
            tensors["padding"] = self.padding
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                  metadata={"captions": json.dumps(self.captions)})

    @classmethod
    def load(cls, path: str | Path) -> "ProjectorCache":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            captions = json.loads(f.metadata()["captions"])
        return cls(captions=captions, **tensors)


@torch.no_grad()
def collect_signal_states(app: Any, samples: Sequence[Any], *, batch_size: int = 8,
                          modalities: Sequence[str] | None = None) -> dict[str, ProjectorCache]:
    """Run the LLM once over training conversations and cache, per output modality, the states at each
    run of signal tokens with the decoder's target for its caption.

    `samples`: objects with `.turns` (list of Turn; assistant turns carry the signal strings) and
    `.outputs` ([(modality, caption)] in the order of the runs), as `stages.Sample`; or (turns,
    outputs) pairs. The states come from the model's one forward (`AnyGPTModel.forward`, teacher-forced),
    as training and inference take them: the last layer's at what the run's projector reads
    (`SignalRun.reads`) and those tokens' input embeddings. Valid while the LLM and its signal rows
    stay as they are (train those first)."""
    model = app.model
    was_training = model.training
    model.eval()
    hidden: dict[str, list[torch.Tensor]] = {}
    embeds: dict[str, list[torch.Tensor]] = {}
    captions: dict[str, list[str]] = {}
    pairs = [(s.turns, s.outputs) if hasattr(s, "turns") else tuple(s) for s in samples]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        out = model([list(turns) for turns, _ in chunk], project=False)  # the model's one forward
        for b, (_, outputs) in enumerate(chunk):
            for run, states, (modality, caption) in zip(out.runs[b], out.states[b], outputs):
                if run.modality != modality:
                    raise ValueError(f"sample {start + b}: a run of {run.modality} where its outputs say {modality}")
                if modalities is not None and modality not in modalities:
                    continue
                hidden.setdefault(modality, []).append(states.float().cpu())
                embeds.setdefault(modality, []).append(out.batch.inputs_embeds[b, run.reads].float().cpu())
                captions.setdefault(modality, []).append(caption)
    model.train(was_training)
    caches = {}
    for m in hidden:
        unique = list(dict.fromkeys(captions[m]))
        where = {c: k for k, c in enumerate(unique)}
        decoder = app.decoder(m)
        targets = torch.cat([decoder.encode_text(unique[i:i + 64]).float().cpu() for i in range(0, len(unique), 64)])
        masks = torch.cat([caption_mask(decoder, unique[i:i + 64]) for i in range(0, len(unique), 64)])
        h, e, padding = pad_rows(hidden[m], embeds[m])
        caches[m] = ProjectorCache(hidden=h, input_embeds=e[0] if bool((e == e[:1]).all()) else e,
                                   index=torch.tensor([where[c] for c in captions[m]]), targets=targets, masks=masks,
                                   captions=unique, padding=padding)
    return caches


def token_targets(decoder: Any, cache: ProjectorCache, tokens: int) -> ProjectorCache:
    """The cache with its captions' token states as targets (`decoder.token_states`: [U, tokens, dim], zero
    at padding, every position counted): what a pooled projector's token states are fitted to."""
    states = torch.cat([decoder.token_states(cache.captions[i:i + 64], tokens).float().cpu()
                        for i in range(0, len(cache.captions), 64)])
    return dataclasses.replace(cache, targets=states, masks=torch.ones(states.shape[:2], dtype=torch.bool))


def train_projector(projector: nn.Module, cache: ProjectorCache, *, steps: int = 2000, batch_size: int = 32,
                    lr: float = 1e-3, weight_decay: float = 0.0, warmup: int = 50, seed: int = 0,
                    log_every: int = 100, on_log: Callable[[int, dict[str, float]], None] | None = None,
                    dropout: float = 0.0, **loss_options: Any) -> list[dict[str, float]]:
    """Fit an output projector on a ProjectorCache with `alignment_loss` (AdamW, warmup then cosine decay).

    `loss_options` go to `alignment_loss` (mse_weight, contrastive_weight, temperature, pad_weight, pool);
    the contrastive centre is the cache's mean target. Returns the logs averaged over each `log_every`
    steps (with "step"); `on_log(step, logs)` sees them as they come. `dropout` is set on the projector's
    layers for the fit only (`set_dropout`; back to 0 after it, as the projector was built). The
    projector is left in eval mode. A pooled projector (`pool_from`) trains on the token states it sums,
    so the cache's targets are then the text encoder's token states (`token_targets`)."""
    forward = projector.token_states if getattr(projector, "pool_from", 0) else projector
    set_dropout(projector, dropout)
    params = [p for p in projector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    generator = torch.Generator().manual_seed(seed)
    center = cache.center()
    device = next(projector.parameters()).device
    projector.train()
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    for step in range(steps):
        rows = torch.randperm(len(cache), generator=generator)[:batch_size]
        hidden, embeds, target, mask, groups, padding = (t if t is None else t.to(device) for t in cache.batch(rows))
        pred = forward(hidden, embeds, padding)
        loss, logs = alignment_loss(pred, target, mask, center=center.to(device), groups=groups, **loss_options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        window.append(logs)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            summary = {k: sum(w[k] for w in window) / len(window) for k in window[0]} | {"step": step + 1}
            history.append(summary)
            window = []
            if on_log is not None:
                on_log(step + 1, summary)
    set_dropout(projector, 0.0)
    projector.eval()
    return history


@torch.no_grad()
def cache_retrieval(projector: nn.Module, cache: ProjectorCache, rows: torch.Tensor | None = None,
                    batch_size: int = 256) -> dict[str, float]:
    """How well a projector separates the cached runs: `top1`, the share whose prediction is nearest (L2,
    flattened, as `anygpt eval` measures) to its own caption's target among all the cache's targets, and
    `spread`, the mean pairwise L2 of the predictions over that of their targets. To check, after stage 3,
    that it kept what stage 2 taught (on a cache held out from training)."""
    from anygpt.eval.conditioning import mean_pairwise_l2

    rows = torch.arange(len(cache)) if rows is None else rows
    device = next(projector.parameters()).device
    was_training = projector.training
    projector.eval()
    preds = []
    for i in range(0, len(rows), batch_size):
        hidden, embeds, _, _, _, padding = cache.batch(rows[i:i + batch_size])
        padding = None if padding is None else padding.to(device)
        preds.append(projector(hidden.to(device), embeds.to(device), padding).float().cpu())
    projector.train(was_training)
    pred = torch.cat(preds)
    bank = cache.targets.flatten(1).double()
    nearest = torch.cdist(pred.flatten(1).double(), bank).argmin(1)
    same = (cache.targets[nearest] == cache.targets[cache.index[rows]]).flatten(1).all(1)  # a twin caption counts
    target_spread = mean_pairwise_l2(cache.targets[cache.index[rows]])
    return {"top1": float(same.float().mean()),
            "spread": mean_pairwise_l2(pred) / target_spread if target_spread > 0 else float("nan")}
