"""Refit the output projectors on cached LLM states, against the decoders they feed (README, "Training").

Stages 2-3 train the signal-token rows and LoRA that make the LLM ask for a picture, a sound or a
clip. Once those are trained, the LLM's last-layer states at the signal tokens of a conversation no
longer change, so the output projectors can be fitted on those states alone: the LLM runs once over
the training dialogs (`collect_signal_states`, through the model's one forward), and each projector
then trains for thousands of steps in minutes on a CPU with the loss that cannot collapse
(`alignment_loss`: MSE over the caption's real tokens + InfoNCE across the batch).

This is also how a model moves to new decoders: `decoders` names the new folders, and a projector
whose decoder takes another conditioning shape is rebuilt for it before it is fitted. The stage
reports, per modality, the conditioning retrieval of held-out captions (dialogs whose caption no
training dialog asks for) before and after, so a collapse shows at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from anygpt.config import resolve_path
from anygpt.data import toyworld as tw
from anygpt.data.dialogs import echo_sound_requests, novel_sound_requests, read_dialogs, request_dialog
from anygpt.data.manifest import read_manifest
from anygpt.pipeline import AnyGPT
from anygpt.projectors import OutputProjector
from anygpt.train.alignment import (ProjectorCache, cache_retrieval, collect_signal_states, token_targets,
                                    train_projector)
from anygpt.train.loop import console
from anygpt.train.stages import stage3_samples


def use_decoder(app: AnyGPT, modality: str, path: str, seed: int = 0) -> bool:
    """Point `app` at another decoder folder for `modality`; rebuild its output projector when the
    conditioning shape changes. True when the projector was rebuilt (it must then be trained).

    A rebuilt projector starts from `seed` alone, not from whatever ran before it: its start moved
    the fitted video projector's held-out retrieval by up to 17 points (README)."""
    from decoders import DECODERS

    decoder = DECODERS[modality].from_pretrained(resolve_path(path), torch_dtype=torch.float32)
    shape = tuple(decoder.conditioning.shape)
    settings = app.config.decoders[modality].model_copy(update={"path": path, "conditioning": shape})
    app.config = app.config.model_copy(update={"decoders": {**app.config.decoders, modality: settings}})
    app.model.config = app.config
    app.unload_decoder(modality)
    old = app.model.output_projectors[modality]
    if (old.tokens, old.out_dim) == shape:
        return False
    rebuild_projector(app, modality, seed)
    return True


def rebuild_projector(app: AnyGPT, modality: str, seed: int = 0) -> None:
    """A new output projector for `modality`, sized from its decoder's conditioning, started from `seed` alone."""
    shape = app.config.decoders[modality].conditioning
    p = app.config.projector
    torch.manual_seed(seed)
    app.model.output_projectors[modality] = OutputProjector(
        app.model.llm.config.hidden_size, shape[0], shape[1], d_model=p.d_model, heads=p.heads,
        encoder_layers=p.encoder_layers, decoder_layers=p.decoder_layers, feedforward=p.feedforward,
        pool_from=p.pooled_tokens.get(modality, 0))


def split_by_caption(cache: ProjectorCache, heldout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, held-out): held-out rows ask for captions that no training row asks for.
    A fraction of 0 holds out nothing (every row trains)."""
    if heldout_fraction <= 0:
        return torch.arange(len(cache)), torch.zeros(0, dtype=torch.long)
    rng = np.random.default_rng(seed)
    captions = rng.permutation(len(cache.captions))
    heldout = set(captions[:max(1, int(round(heldout_fraction * len(captions))))].tolist())
    is_heldout = torch.tensor([int(k) in heldout for k in cache.index])
    return torch.nonzero(~is_heldout)[:, 0], torch.nonzero(is_heldout)[:, 0]


def subset(cache: ProjectorCache, rows: torch.Tensor) -> ProjectorCache:
    embeds = cache.input_embeds if cache.input_embeds.dim() == 2 else cache.input_embeds[rows]
    return ProjectorCache(hidden=cache.hidden[rows], input_embeds=embeds, index=cache.index[rows],
                          targets=cache.targets, masks=cache.masks, captions=cache.captions,
                          padding=None if cache.padding is None else cache.padding[rows])


def realign_projectors(init: str | Path, dialogs: str | Path, out: str | Path, *,
                       decoders: dict[str, str] | None = None, modalities: tuple[str, ...] | None = None,
                       steps: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                       contrastive_weight: float = 0.1, pad_weight: float = 0.0, heldout_fraction: float = 0.1,
                       limit: int | None = None, manifest: str | Path | None = None,
                       per_modality: int = 500, fresh: bool = False,
                       reads: str | None = None, dropout: float = 0.0, pooled_tokens: int = 0,
                       novel_audio: int = 0, novel_kinds: tuple[str, ...] = tw.NOVEL_SOUNDS,
                       echo_audio: int = 0) -> dict:
    """Fit the output projectors of the model in `init` on its cached signal states; writes out/model.

    `decoders`: modality -> decoder folder to move to (e.g. {"image": "anygpt:tiny/image"}).
    `modalities`: which projectors to fit (default: every output modality of the dialogs). The cached
    states are kept in out/ (one file per modality), so a re-run skips the LLM pass. `manifest` adds
    a request for each of up to `per_modality` of its captions per output modality ("draw {caption}"
    -> "Here is ..." and the signal tokens, `request_dialog`): the toy world's many wordings, where the
    dialogs have one per attribute pair. (Stage 2's requests, answered by the signal tokens alone, put
    the LLM in another state than its replies do at inference: with them, held-out retrieval fell.)
    `fresh` starts every fitted projector anew from `seed` (as a rebuilt one
    does) instead of from the init's weights. `reads` ("signal" or "reply") sets what every output
    projector reads (`ProjectorSettings.reads`); a projector not fitted in this run must then be
    fitted in a later one. `heldout_fraction`: the share of captions kept out of the fit to measure
    it on (`heldout_before`/`heldout_after` in realign.json); 0 fits on every caption and measures
    nothing (a shipped fit: the held-out requests of `anygpt eval` judge it). `dropout`: of the
    projector's layers during the fit (`train_projector`). `pooled_tokens` > 0 rebuilds each fitted
    projector whose decoder takes one pooled vector as a pooled one writing that many token states
    (`ProjectorSettings.pooled_tokens`), fitted to the decoder's token states (`train_projector`).
    `novel_audio`: that many requests for sounds of `novel_kinds`, at both lengths, join the sound
    projector's fit (`novel_sound_requests`), and `echo_audio` requests whose reply repeats the
    request's phrase for the kind (`echo_sound_requests`); their states are cached apart, in
    out/states-audio-extra-N-M.safetensors."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    app = AnyGPT.from_pretrained(init)
    if reads is not None and reads != app.config.projector.reads:
        projector = type(app.config.projector).model_validate(app.config.projector.model_dump() | {"reads": reads})
        app.config = app.model.config = app.config.model_copy(update={"projector": projector})
    rebuilt = [m for m, path in (decoders or {}).items() if use_decoder(app, m, path, seed)]
    if pooled_tokens:
        candidates = modalities or tuple(app.model.output_projectors)
        pooled = [m for m in candidates if app.config.decoders[m].conditioning[0] == 1]  # one sentence vector
        if not pooled:
            raise ValueError("--pooled-tokens: no fitted projector feeds a decoder of one pooled vector")
        projector = app.config.projector.model_copy(
            update={"pooled_tokens": app.config.projector.pooled_tokens | {m: pooled_tokens for m in pooled}})
        app.config = app.model.config = app.config.model_copy(update={"projector": projector})
        for m in pooled:
            rebuild_projector(app, m, seed)
        rebuilt += [m for m in pooled if m not in rebuilt]
    samples = [s for s in stage3_samples(app.model, read_dialogs(dialogs)) if s.outputs]
    samples = samples[:limit] if limit else samples
    if manifest is not None:
        examples = read_manifest(manifest, check_files=False)
        chosen = [e for m in sorted({e["modality"] for e in examples} & set(app.model.output_projectors))
                  for e in [x for x in examples if x["modality"] == m][:per_modality]]
        rng = np.random.default_rng(seed)
        samples += stage3_samples(app.model, [request_dialog(rng, e) for e in chosen])
    wanted = tuple(modalities or sorted({m for s in samples for m, _ in s.outputs}))
    samples = [s for s in samples if any(m in wanted for m, _ in s.outputs)]
    caches = {m: ProjectorCache.load(out / f"states-{m}.safetensors") for m in wanted
              if (out / f"states-{m}.safetensors").is_file()}
    missing = [m for m in wanted if m not in caches]
    if missing:
        console.print(f"collecting signal states of {len(samples)} dialogs for {', '.join(missing)}")
        collected = collect_signal_states(app, samples, batch_size=16, modalities=missing)
        for m, cache in collected.items():
            cache.save(out / f"states-{m}.safetensors")
        caches |= collected
    if (novel_audio or echo_audio) and "audio" in wanted:
        path = out / f"states-audio-extra-{novel_audio}-{echo_audio}.safetensors"
        if path.is_file():
            extra = ProjectorCache.load(path)
        else:
            requests = novel_sound_requests(novel_audio, seed, novel_kinds) + echo_sound_requests(echo_audio, seed)
            console.print(f"collecting signal states of {len(requests)} more sound requests")
            extra = collect_signal_states(app, stage3_samples(app.model, requests), batch_size=16,
                                          modalities=["audio"])["audio"]
            extra.save(path)
        caches["audio"] = ProjectorCache.concat([caches["audio"], extra])
    if fresh:
        for m in wanted:
            if m not in rebuilt:
                rebuild_projector(app, m, seed)
                rebuilt.append(m)
    report = {"init": str(init), "decoders": decoders or {}, "rebuilt": rebuilt, "steps": steps,
              "batch_size": batch_size, "lr": lr, "contrastive_weight": contrastive_weight,
              "pad_weight": pad_weight, "dropout": dropout, "heldout_fraction": heldout_fraction,
              "reads": app.config.projector.reads, "pooled_tokens": app.config.projector.pooled_tokens,
              "samples": len(samples), "novel_audio": novel_audio,
              "echo_audio": echo_audio,
              "modalities": {}}
    for m in wanted:
        cache = caches[m]
        train_rows, heldout_rows = split_by_caption(cache, heldout_fraction, seed)
        projector = app.model.output_projectors[m]
        measured = len(heldout_rows) > 0
        before = cache_retrieval(projector, cache, heldout_rows) if measured else None
        torch.manual_seed(seed)
        fitted = subset(cache, train_rows)
        if projector.pool_from:
            fitted = token_targets(app.decoder(m), fitted, projector.pool_from)
        history = train_projector(projector, fitted, steps=steps, batch_size=batch_size, lr=lr,
                                  seed=seed, contrastive_weight=contrastive_weight, pad_weight=pad_weight,
                                  dropout=dropout, log_every=250,
                                  on_log=lambda step, logs, m=m: console.print(
                                      f"{m} projector step {step}/{steps} " +
                                      " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "step")))
        after = cache_retrieval(projector, cache, heldout_rows) if measured else None
        report["modalities"][m] = {"runs": len(cache), "captions": len(cache.captions),
                                   "heldout_runs": len(heldout_rows), "heldout_before": before,
                                   "heldout_after": after, "final": history[-1]}
        if measured:
            console.print(f"{m}: held-out retrieval top-1 {before['top1']:.3f} -> {after['top1']:.3f}, "
                          f"spread {before['spread']:.3f} -> {after['spread']:.3f}")
    app.trained = True
    app.save_pretrained(out / "model")
    (out / "realign.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
