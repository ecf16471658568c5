"""AnyGPTModel: ImageBind -> input projector -> LLM with signal tokens -> output projectors.

One plain module that owns every part between the raw media and the decoders'
conditioning, with one forward path for training and inference (LLaVA's
`prepare_inputs_labels_for_multimodal`, nanoGPT's `forward(idx, targets)`):

- `prepare_inputs_labels` turns a batch of conversations (turns with media, assistant turns
  with their signal tokens, optionally a reply given as token ids) into the LLM's inputs
  and labels. It is the one place where encoder tokens are put into the text embeddings.
- `forward` (the module's call) runs the LLM on that and returns the LM loss, the states at
  each run of signal tokens and their conditionings (`project_runs`, the one projection).
- `generate` writes text and signal tokens from a prepared prompt; `signal_conditioning` turns
  the states generation kept at each run into a decoder's `prompt_embeds` through the same
  `project_runs` (or, when generation kept no state for a run, through `forward`).

The fast path: `generate_batch` runs several prompts through one `generate` call (left
padding), and keeps the last-layer hidden state of every token it feeds back, so the signal
tokens' states come from generation itself instead of a second forward pass. One prompt
alone writes each run of signal tokens in one step and starts from the KV cache of the
conversation so far (`_reuse_prefix`). For inference the LoRA adapter is merged into the base
weights (`merge_lora`); `train()` unmerges it.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (DynamicCache, LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          StoppingCriteria, StoppingCriteriaList)
from transformers.cache_utils import DynamicLayer

from encoders import audio_loudness, audio_window, grey_video, middle_frame

from anygpt.config import AnyGPTConfig
from anygpt.errors import InputError
from anygpt.llm import MEDIA_TOKEN, SignalTokens, add_signal_tokens
from anygpt.projectors import InputProjector, OutputProjector, pad_rows


@dataclass
class Turn:
    """One conversation turn. A user turn may carry media items (modality, item), shown before its text."""

    role: Literal["user", "assistant"]
    text: str
    media: list[tuple[str, Any]] = field(default_factory=list)
    # training only: words of an assistant turn that are not learnt (their tokens' labels are -100),
    # e.g. a world sound's length, which its kind gives away (README, "Reading lengths with the LoRA")
    unlearnt: tuple[str, ...] = ()
    # training only: (word, other) pairs whose word is learnt as a soft target, `HEDGE` of it on the
    # other word's token: a sure answer pushes its logit without bound, and for a world sound that
    # push goes to the kind (README, "Lengths and directions learnt from words"); or (word, other,
    # weight) triples with their own weight (0.5: that one of the two is said, not which; `EITHER`:
    # either word is right, their summed probability is learnt and the split is left to the rest)
    hedged: tuple[tuple, ...] = ()


@dataclass(frozen=True)
class CaptionStandIn:
    """Training only: a caption put where a media item goes, encoded by the encoder's text branch. The
    encoder binds every modality to its text embeddings (as ImageBind does), so the reader can learn
    from words what the toy world's media never show apart, e.g. a length with any kind of sound
    (README, "Lengths and directions learnt from words")."""

    text: str


@dataclass(frozen=True)
class ViewsApart:
    """Training only: a media item whose own token is read from `own` and its views (`AnyGPTModel.views`)
    each from the item at the same place in `views`; e.g. a sound whose whole is heard at the other
    length than its loudness tail, so that the LLM learns which token a length is read from (README,
    "Which token the length is read from")."""

    own: Any
    views: tuple[Any, ...]


HEDGE = 0.1  # the weight a hedged word's target puts on its other word (`Turn.hedged`)
EITHER = -1.0  # a hedged word's weight meaning "either word": the loss is -log(p(word) + p(other))


@dataclass
class SignalRun:
    """One complete run of a modality's signal tokens in the reply: one artifact to make."""

    modality: str
    positions: list[int]  # indices into the generated ids
    # what its output projector reads (`AnyGPTModel.reads`): the run, or the reply up to its end
    reads: list[int] = field(default_factory=list)


@dataclass
class Reply:
    """What the LLM wrote for one prompt: its token ids (signal tokens included, end-of-turn
    dropped), how many tokens it generated (the end token included), and the last-layer hidden
    states [n, H] of `ids[:n]`, the tokens that generation fed back through the model."""

    ids: list[int]
    generated: int = 0
    hidden: torch.Tensor | None = None


@dataclass
class Conversation:
    """One conversation for `prepare_inputs_labels` / `forward`: its turns (media in user turns,
    each shown before the turn's text; assistant turns carry their signal tokens in their text)
    and, when the last turn is the user's, optionally the reply as token ids (what `generate`
    wrote). Labels cover the assistant turns (their end of turn included) and the reply."""

    turns: list[Turn]
    reply: list[int] | None = None


@dataclass
class MultimodalBatch:
    """What the LLM reads for a batch of conversations, right-padded: `input_ids` [B, L] (the pad
    id past each row's end), `inputs_embeds` [B, L, H] (media spliced in at their placeholders),
    `attention_mask` [B, L], `labels` [B, L] (-100 where nothing is learnt); `ids` the unpadded
    rows and `prompt_lengths` the tokens of each row before its reply (the row's length when none)."""

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    ids: list[list[int]]
    prompt_lengths: list[int]
    others: torch.Tensor | None = None  # [B, L]: a hedged word's other token where `labels` has it, else -100
    other_weights: torch.Tensor | None = None  # [B, L]: the weight of the target on that other token


@dataclass
class AnyGPTOutput:
    """What `forward` returns for a batch of conversations.

    `loss`: the mean LM loss over the labelled tokens (next-token prediction; None when nothing
    is labelled); `loss_sum` and `label_count`: its sum and count, to average over a global batch
    split between processes. Per conversation, per complete run of signal tokens (in order):
    `runs` (positions in the row),
    `states` [n, H] (the last layer's states at what its projector reads, `SignalRun.reads`) and
    `conditionings` [tokens, dim] (the output projector's, the decoder's `prompt_embeds`)."""

    loss: torch.Tensor | None
    loss_sum: torch.Tensor
    label_count: int
    runs: list[list[SignalRun]]
    states: list[list[torch.Tensor]]
    conditionings: list[list[torch.Tensor]]
    batch: MultimodalBatch


class _LastHidden:
    """A forward hook on the LM head: its input is the last layer's (normed) hidden state, the
    same tensor as `hidden_states[-1]`. While a thread collects, each forward's last position is
    kept: the prefill's last prompt token, then one generated token per step."""

    def __init__(self):
        self.local = threading.local()

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        steps = getattr(self.local, "steps", None)
        if steps is not None:
            steps.append(args[0][:, -1].detach().float())

    @contextmanager
    def collect(self):
        self.local.steps = steps = []
        try:
            yield steps
        finally:
            self.local.steps = None


class SignalRunProcessor(LogitsProcessor):
    """Keeps signal tokens well-formed while the LLM writes.

    A run starts only at a modality's first token (`[IMG0]`) and, once started, is completed
    in order (`[IMG1]`, `[IMG2]`, ...), so every run is exactly one artifact and tokens are never
    repeated or left dangling. Disallowed modalities, the media placeholder and runs beyond
    `max_runs` are suppressed.
    """

    def __init__(self, signal: SignalTokens, allowed: set[str], banned_ids: list[int], max_runs: int,
                 earlier: list[int] = ()):
        self.signal, self.allowed, self.max_runs = signal, allowed, max_runs
        self.earlier = list(earlier)  # tokens of the same reply written before this generate call
        self.banned = list(banned_ids)
        for m, ids in signal.ids.items():
            self.banned += ids[1:] if m in allowed else ids  # non-first tokens never start a run
        self.starts = [ids[0] for m, ids in signal.ids.items() if m in allowed]
        self.next_of = {ids[k]: ids[k + 1] for ids in signal.ids.values() for k in range(len(ids) - 1)}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(scores.shape[0]):
            generated = self.earlier + input_ids[row].tolist()  # generate from embeddings: only new tokens
            last = generated[-1] if generated else None
            if last in self.next_of:  # inside a run: force its next token
                forced = self.next_of[last]
                scores[row] = float("-inf")
                scores[row, forced] = 0.0
                continue
            scores[row, self.banned] = float("-inf")
            if sum(generated.count(s) for s in self.starts) >= self.max_runs:
                scores[row, self.starts] = float("-inf")
        return scores


class _StopAtRunStart(StoppingCriteria):
    """Stops generation right after the first token of a run of signal tokens (see `_write_one`)."""

    def __init__(self, starts: set[int]):
        self.starts = starts

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor([bool(row.numel()) and row[-1].item() in self.starts for row in input_ids],
                            device=input_ids.device)


class _TextBudget(StoppingCriteria):
    """Stops a row once it has written `budget` tokens of its own choosing, and never inside a run of
    signal tokens: a run counts as one token (its first), since the rest of it is fixed once it starts.
    So a reply asked for a clip and a sound is not cut in its second run by a budget sized for words."""

    def __init__(self, budget: int, next_of: dict[int, int]):
        self.budget, self.next_of, self.fixed = budget, next_of, set(next_of.values())

    def chosen(self, tokens: list[int]) -> int:
        """How many of `tokens` count against the budget: all but the fixed rest of each run."""
        return sum(t not in self.fixed for t in tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        rows = input_ids.tolist()  # generate from embeddings: only new tokens
        return torch.tensor([self.chosen(row) >= self.budget and not (row and row[-1] in self.next_of)
                             for row in rows], device=input_ids.device)


class AnyGPTModel(nn.Module):
    def __init__(self, config: AnyGPTConfig, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 encoder: nn.Module, init_new_rows: bool = True):
        """`init_new_rows=False`: the signal-token rows will be loaded from trained weights, so
        their (slow) mean-and-covariance initialisation is skipped."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.base_vocab = len(tokenizer)
        self.signal, self.media_token_id = add_signal_tokens(llm, tokenizer, config.signal_tokens,
                                                                init_rows=init_new_rows)
        if config.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lc = config.lora
            llm = get_peft_model(llm, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
        self.llm = llm
        self.encoder = encoder
        hidden = llm.config.hidden_size if not config.lora.enabled else llm.base_model.model.config.hidden_size
        self.input_projector = InputProjector(encoder.embed_dim, hidden)
        p = config.projector
        self.output_projectors = nn.ModuleDict({
            m: OutputProjector(hidden, d.conditioning[0], d.conditioning[1], d_model=p.d_model, heads=p.heads,
                               encoder_layers=p.encoder_layers, decoder_layers=p.decoder_layers,
                               feedforward=p.feedforward, pool_from=p.pooled_tokens.get(m, 0))
            for m, d in config.decoders.items() if m in config.signal_tokens
        })
        self.reserved = [MEDIA_TOKEN] + [t for toks in self.signal.tokens.values() for t in toks]
        self._last_hidden = _LastHidden()  # no LM head module (rare): signal_conditioning runs `forward`
        if self.llm.get_output_embeddings() is not None:
            self.llm.get_output_embeddings().register_forward_hook(self._last_hidden)
        self._lora_lock = threading.Lock()
        self._lora_merged = False  # only merge_lora/unmerge_lora change it
        self._prefix: tuple[torch.Tensor, DynamicCache] | None = None  # see _reuse_prefix
        self._prefix_lock = threading.Lock()

    # -- 0. inference and training modes ------------------------------------------------------
    def merge_lora(self) -> None:
        """Fold the LoRA adapter into the base weights (peft's merge_adapter): the same function,
        without the adapter's extra matmuls on every layer. Idempotent and thread-safe."""
        if self.config.lora.enabled and not self._lora_merged:
            with self._lora_lock:
                if not self._lora_merged:
                    self.llm.merge_adapter()
                    self._lora_merged = True
                    self.forget_prefix()

    def unmerge_lora(self) -> None:
        if self.config.lora.enabled and self._lora_merged:
            with self._lora_lock:
                if self._lora_merged:
                    self.llm.unmerge_adapter()
                    self._lora_merged = False
                    self.forget_prefix()

    def train(self, mode: bool = True) -> "AnyGPTModel":
        """Training needs the adapter apart from the base weights (its gradients, its saved state)."""
        if mode:
            self.unmerge_lora()
            self.forget_prefix()  # the weights are about to change
        return super().train(mode)

    def forget_prefix(self) -> None:
        """Drop the kept KV cache (after the weights change, or to free its memory)."""
        with self._prefix_lock:
            self._prefix = None

    # -- 1. prompt ----------------------------------------------------------------------------
    def slots(self, modality: str) -> int:
        """Placeholders (input tokens) per media item: one, and one per view (`views`)."""
        return 1 + len(self.views(modality))

    def views(self, modality: str) -> list[tuple[str, Callable[[Any], Any]]]:
        """An item's further tokens, each (the modality it is encoded as, what becomes of the item):
        a sound's windows (`audio_windows`) and loudness windows (`audio_loudness_windows`); a clip's
        grey copy (`video_grey`) and middle frame, as a picture (`video_still`)."""
        limits = getattr(self.encoder, "limits", None)
        views = []
        if modality == "audio":
            views += [("audio", functools.partial(audio_window, start=a, end=b, limits=limits))
                      for a, b in self.config.audio_windows]
            views += [("audio", functools.partial(audio_loudness, start=a, end=b, limits=limits))
                      for a, b in self.config.audio_loudness_windows]
        if modality == "video" and self.config.video_grey:
            views.append(("video", functools.partial(grey_video, limits=limits)))
        if modality == "video" and self.config.video_still:
            views.append(("image", functools.partial(middle_frame, limits=limits)))
        return views

    def render(self, turns: list[Turn], add_generation_prompt: bool = True) -> str:
        """The conversation as the LLM sees it: its chat template, `slots` placeholders per media item."""
        messages = []
        if self.config.llm.system_prompt:
            messages.append({"role": "system", "content": self.config.llm.system_prompt})
        for turn in turns:
            if turn.role == "user":  # signal tokens belong to the assistant; the placeholder to us
                for token in self.reserved:
                    if token in turn.text:
                        raise InputError(f"the prompt contains the reserved token {token!r}")
            media = "".join(f"{self.config.media_wrap[m][0]}{MEDIA_TOKEN * self.slots(m)}{self.config.media_wrap[m][1]}\n"
                            for m, _ in turn.media)
            messages.append({"role": turn.role, "content": media + turn.text})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    # -- 2. conversations -> the LLM's inputs and labels (the one place media meet the text) -----
    def tokenize_conversation(self, turns: Sequence[Turn], reply: Sequence[int] | None = None
                              ) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation; see `tokenize_hedged`."""
        return self.tokenize_hedged(turns, reply)[:2]

    def tokenize_hedged(self, turns: Sequence[Turn], reply: Sequence[int] | None = None
                        ) -> tuple[list[int], list[int], list[int], list[float]]:
        """Token ids and labels of a conversation (placeholders included). Each assistant turn is
        tokenized apart from what precedes it and learnt (its words, signal tokens and end of turn);
        everything else is -100. A conversation ending with the user's turn ends with the generation
        prompt (what `generate` continues), then `reply` (learnt) when given. The third list holds, at
        the one token of each hedged word (`Turn.hedged`), the token of its other word, else -100; the
        fourth the weight on that other word there (else 0)."""
        if not turns:
            raise InputError("a conversation needs at least one turn")
        ids: list[int] = []
        labels: list[int] = []
        others: list[int] = []
        weights: list[float] = []
        done = ""

        def spans(words, text):
            return [(m.span(), w) for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", text)]

        def other_token(token: int, word: str, other: str) -> int:
            swapped = self.tokenizer(self.tokenizer.decode([token]).replace(word, other),
                                     add_special_tokens=False).input_ids
            return swapped[0] if len(swapped) == 1 else -100

        def add(text: str, learn: bool, unlearnt: tuple[str, ...] = (), hedged=()) -> None:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(unlearnt or hedged))
            piece = enc.input_ids
            ids.extend(piece)
            others.extend([-100] * len(piece))
            weights.extend([0.0] * len(piece))
            if not learn:
                labels.extend([-100] * len(piece))
                return
            pairs = {h[0]: (h[1], h[2] if len(h) > 2 else HEDGE) for h in hedged}
            drop, hedge = spans(unlearnt, text), spans(pairs, text)
            if not drop and not hedge:
                labels.extend(piece)
                return
            start = len(labels)
            labels.extend(-100 if any(a < end and s < b for (s, end), _ in drop) else token
                          for token, (a, b) in zip(piece, enc.offset_mapping))
            for (s, end), word in hedge:
                inside = [i for i, (a, b) in enumerate(enc.offset_mapping) if a < end and s < b]
                if len(inside) == 1 and labels[start + inside[0]] != -100:  # a word of one token
                    at = start + inside[0]
                    others[at] = other_token(piece[inside[0]], word, pairs[word][0])
                    weights[at] = pairs[word][1] if others[at] != -100 else 0.0

        for k, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            prefix = self.render(turns[:k], add_generation_prompt=True)
            upto = self.render(turns[:k + 1], add_generation_prompt=False)
            if not (prefix.startswith(done) and upto.startswith(prefix)):
                raise ValueError("the chat template does not render a conversation as a prefix of its continuation")
            add(prefix[len(done):], False)
            add(upto[len(prefix):], True, turn.unlearnt, turn.hedged)
            done = upto
        if turns[-1].role == "user":
            prompt = self.render(turns, add_generation_prompt=True)
            add(prompt[len(done):], False)
            if reply is not None:
                ids.extend(reply)
                labels.extend(reply)
                others.extend([-100] * len(reply))
                weights.extend([0.0] * len(reply))
        elif reply is not None:
            raise ValueError("a reply follows a conversation that ends with the user's turn")
        return ids, labels, others, weights

    def tokenize(self, turns: Sequence[Turn]) -> torch.Tensor:
        """The conversation as token ids [L] (placeholders included), as `prepare_inputs_labels` reads it."""
        return torch.tensor(self.tokenize_conversation(turns)[0])

    def encode_media(self, media: list[tuple[str, Any]]) -> torch.Tensor:
        """Every media item -> its `slots` LLM-sized token embeddings [sum of slots, H], in order: the
        item's own embedding, then its views' (`views`: a sound's windows, a clip's grey copy). Items
        of a modality share a batch; `CaptionStandIn` items go through the encoder's text branch
        together, a caption filling its item's every slot."""
        def source(x, i):  # what view i (None: the item's own token) reads
            if not isinstance(x, ViewsApart):
                return x
            return x.own if i is None else x.views[i]

        media = [part for m, x in media for part in [(m, source(x, None))] + [
            (m, x) if isinstance(x, CaptionStandIn) else (as_modality, view(source(x, i)))
            for i, (as_modality, view) in enumerate(self.views(m))]]
        weight = self.input_projector.proj.weight
        out = torch.empty(len(media), self.input_projector.proj.out_features, device=weight.device)
        for modality in dict.fromkeys(m for m, _ in media):
            index = [i for i, (m, x) in enumerate(media) if m == modality and not isinstance(x, CaptionStandIn)]
            if index:
                emb = self.encoder.encode(modality, [media[i][1] for i in index])
                out[index] = self.input_projector(emb.to(weight)).float()
        words = [i for i, (_, x) in enumerate(media) if isinstance(x, CaptionStandIn)]
        if words:
            emb = self.encoder.encode_text([media[i][1].text for i in words])
            out[words] = self.input_projector(emb.to(weight)).float()
        return out

    def prepare_inputs_labels(self, conversations: Sequence[Conversation | Sequence[Turn]]) -> MultimodalBatch:
        """A batch of conversations -> the LLM's inputs and labels (LLaVA's
        `prepare_inputs_labels_for_multimodal`): tokenized (`tokenize_conversation`), the media of all
        conversations encoded together (`encode_media`), each placeholder's token embedding replaced by
        its media item's, rows right-padded. A single conversation is not padded: its embeddings are
        the prompt `generate` takes."""
        convs = [c if isinstance(c, Conversation) else Conversation(list(c)) for c in conversations]
        if not convs:
            raise ValueError("prepare_inputs_labels needs at least one conversation")
        hedged = [self.tokenize_hedged(c.turns, c.reply) for c in convs]
        rows = [(ids, lab) for ids, lab, _, _ in hedged]
        media = [item for c in convs for t in c.turns for item in t.media]
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        length = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id or 0
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        others = torch.full((len(rows), length), -100, dtype=torch.long)
        weights = torch.zeros(len(rows), length)
        for b, (ids, lab, alt, w) in enumerate(hedged):
            input_ids[b, :len(ids)], labels[b, :len(ids)], mask[b, :len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
            others[b, :len(ids)], weights[b, :len(ids)] = torch.tensor(alt), torch.tensor(w)
        input_ids, labels, mask = input_ids.to(device), labels.to(device), mask.to(device)
        slots = (input_ids == self.media_token_id) & mask.bool()
        for b, c in enumerate(convs):
            n = sum(self.slots(m) for t in c.turns for m, _ in t.media)
            if int(slots[b].sum()) != n:
                raise InputError(f"{int(slots[b].sum())} media placeholders in the prompt but {n} for its media items")
        inputs_embeds = embed(input_ids)
        if media:  # row-major order of the slots is the order of the conversations' media
            inputs_embeds = inputs_embeds.index_put(tuple(slots.nonzero().T), self.encode_media(media).to(inputs_embeds))
        prompt_lengths = [len(ids) - (len(c.reply) if c.reply is not None else 0) for c, (ids, _) in zip(convs, rows)]
        hedging = bool((others != -100).any())
        return MultimodalBatch(input_ids, inputs_embeds, mask, labels, [ids for ids, _ in rows], prompt_lengths,
                               others.to(device) if hedging else None, weights.to(device) if hedging else None)

    def forward(self, conversations: Sequence[Conversation | Sequence[Turn]], *, project: bool = True) -> AnyGPTOutput:
        """The model's one forward pass, for training and for inference's states alike: the batch's
        inputs and labels (`prepare_inputs_labels`), the LLM, the LM loss over the labelled tokens and,
        at each complete run of signal tokens, the last layer's states and (`project`) their
        conditionings (`project_runs`)."""
        batch = self.prepare_inputs_labels(conversations)
        runs = [self.find_runs(ids) for ids in batch.ids]
        want_states = any(runs)
        out = self.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                       output_hidden_states=want_states, use_cache=False)
        targets = batch.labels[:, 1:]
        label_count = int((targets != -100).sum())
        logits = out.logits[:, :-1].float().flatten(0, 1)
        if batch.others is None:
            loss_sum = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="sum")
        else:  # a hedged word's target: 1 - w on its own token, w on its other word's (`Turn.hedged`)
            loss = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="none")
            others = batch.others[:, 1:].flatten()
            hedged = others != -100
            w = batch.other_weights[:, 1:].flatten()[hedged].to(loss)
            own, other = loss[hedged], F.cross_entropy(logits[hedged], others[hedged], reduction="none")
            either = -torch.logaddexp(-own, -other)  # -log(p(word) + p(other))
            mixed = (1 - w) * own + w * other
            loss = loss.index_put((hedged.nonzero()[:, 0],), torch.where(w == EITHER, either, mixed))
            loss_sum = loss.sum()
        states: list[list[torch.Tensor]] = [[] for _ in runs]
        conditionings: list[list[torch.Tensor]] = [[] for _ in runs]
        if want_states:
            hidden = out.hidden_states[-1]
            items = [(b, run) for b, row in enumerate(runs) for run in row]
            for b, run in items:  # the assistant's words start where the labels do (a reply: after its prompt)
                start = run.positions[0]
                while start > 0 and batch.labels[b, start - 1] != -100:
                    start -= 1
                run.reads = self.reads(run, start, runs[b])
            taken = [(run.modality, hidden[b, run.reads], batch.inputs_embeds[b, run.reads]) for b, run in items]
            projected = self.project_runs(taken) if project else [None] * len(taken)
            for (b, _), (_, h, _), c in zip(items, taken, projected):
                states[b].append(h)
                conditionings[b].append(c)
        return AnyGPTOutput(loss_sum / label_count if label_count else None, loss_sum, label_count, runs, states,
                            conditionings, batch)

    # -- 3. generate --------------------------------------------------------------------------
    def generate(self, inputs_embeds: torch.Tensor, *, max_new_tokens: int, temperature: float, seed: int,
                 allowed: set[str], force: set[str] = frozenset(), streamer: Any = None) -> Reply:
        """Write the reply to one prompt ([1, L, H] embeddings); see `generate_batch`.
        `streamer` is a transformers streamer that sees each token as it is written."""
        return self.generate_batch([inputs_embeds], max_new_tokens=max_new_tokens, temperature=temperature,
                                   seed=seed, allowed=allowed, force=force, streamer=streamer)[0]

    def generate_batch(self, prompts: list[torch.Tensor], *, max_new_tokens: int, temperature: float, seed: int,
                       allowed: set[str], force: set[str] = frozenset(), streamer: Any = None) -> list[Reply]:
        """Write the replies to several prompts (each [1, L_i, H]).

        Several prompts share one `generate` call, left-padded under an attention mask; one prompt
        goes through `_write_one`, which writes each run of signal tokens in one step. Either way
        each reply is the one the plain loop gives (up to float rounding). `max_new_tokens` counts the
        tokens the LLM chooses: a run of signal tokens counts as one, and is never cut (`_TextBudget`).
        `force` is a test and UI hook: a forced modality whose run the LLM did not write gets one
        appended, so its artifact is still made from the LLM's own hidden states. Sampling (temperature > 0) draws from one
        generator seeded with `seed`.
        """
        eos = self.llm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(eos_ids))
        options = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_p=None,
                       top_k=None, pad_token_id=pad, eos_token_id=eos, streamer=streamer)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if len(prompts) == 1:
                written = [self._write_one(prompts[0], max_new_tokens=max_new_tokens, allowed=allowed, **options)]
            else:
                written = self._write_padded(prompts, max_new_tokens=max_new_tokens, allowed=allowed, **options)
        replies = []
        for seq, fed in written:
            end = next((i for i, t in enumerate(seq) if t in eos_ids), None)
            ids = seq if end is None else seq[:end]
            generated = len(ids) + (end is not None)
            while ids and ids[-1] == pad:
                ids = ids[:-1]
            n = min(len(ids), fed.shape[0]) if fed is not None else 0
            hidden = fed[:n] if n else None
            for m in self.signal.ids:
                if m in force and not any(r.modality == m for r in self.find_runs(ids)):
                    ids = ids + list(self.signal.ids[m])
            replies.append(Reply(ids, generated, hidden))
        return replies

    def _processor(self, allowed: set[str], earlier: list[int] = ()) -> LogitsProcessorList:
        return LogitsProcessorList([SignalRunProcessor(self.signal, allowed, [self.media_token_id],
                                                       self.config.max_outputs_per_reply, earlier=earlier)])

    def _write_padded(self, prompts: list[torch.Tensor], *, max_new_tokens: int, allowed: set[str], pad_token_id: int,
                      **options) -> list[tuple[list[int], torch.Tensor | None]]:
        """Several prompts in one generate call: per row, (tokens written, hidden states [n, H] of the first n)."""
        embeds, mask = self._left_pad(prompts, pad_token_id)
        # room for the fixed rest of every run the reply may hold, beyond the budget of chosen tokens
        room = self.config.max_outputs_per_reply * max([len(ids) - 1 for m, ids in self.signal.ids.items()
                                                         if m in allowed], default=0)
        processor = self._processor(allowed)
        budget = StoppingCriteriaList([_TextBudget(max_new_tokens, processor[0].next_of)])
        with self._last_hidden.collect() as steps:
            sequences = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens + room,
                                          logits_processor=processor, stopping_criteria=budget,
                                          pad_token_id=pad_token_id, **options)
        # steps[0] is the prefill's last prompt token; steps[k] is generated token k-1, fed back at step k.
        fed = torch.stack(steps[1:], dim=1) if len(steps) > 1 else None
        return [(seq, None if fed is None else fed[row]) for row, seq in enumerate(sequences.tolist())]

    def _write_one(self, prompt: torch.Tensor, *, max_new_tokens: int, allowed: set[str],
                   **options) -> tuple[list[int], torch.Tensor | None]:
        """One prompt, each run of signal tokens in one forward pass: once the LLM starts a run
        (`[VID0]`), the rest of it (`[VID1]..[VID23]`) is fixed, so generation stops there, those
        tokens go through the model together into the same KV cache, and generation goes on from
        it. A 24-token run costs one forward instead of 23 decoding steps."""
        embed, device = self.llm.get_input_embeddings(), prompt.device
        rest_of = {ids[0]: list(ids[1:]) for m, ids in self.signal.ids.items() if m in allowed and len(ids) > 1}
        budget = _TextBudget(max_new_tokens, self._processor(allowed)[0].next_of)
        stop = StoppingCriteriaList([_StopAtRunStart(set(rest_of))])
        seq: list[int] = []
        hidden: list[torch.Tensor] = []
        chosen = lambda: budget.chosen(seq)  # the budget's count: a run is one token
        # full: the embeddings of everything so far; cache: the KV of a prefix of it (all but its last, after a call)
        cache, full = self._reuse_prefix(prompt), prompt
        while chosen() < max_new_tokens:
            with self._last_hidden.collect() as steps:
                out = self.llm.generate(inputs_embeds=full, attention_mask=torch.ones(full.shape[:2], dtype=torch.long,
                                                                                      device=device),
                                        past_key_values=cache, max_new_tokens=max_new_tokens - chosen(),
                                        logits_processor=self._processor(allowed, seq), stopping_criteria=stop,
                                        return_dict_in_generate=True, **options)
            new = out.sequences[0].tolist()
            cache = out.past_key_values
            # steps[0] is the last token of `full`: the prompt's (dropped) or the last run's (kept)
            hidden += [h[0] for h in steps[0 if seq else 1:]]
            seq += new
            if not new or new[-1] not in rest_of:
                break
            rest = rest_of[new[-1]]
            feed = [new[-1]] + rest[:-1]  # the cache holds everything before new[-1]
            length = cache.get_seq_length() + len(feed)
            run = self.llm(inputs_embeds=embed(torch.tensor([feed], device=device)), past_key_values=cache,
                           attention_mask=torch.ones(1, length, dtype=torch.long, device=device),
                           output_hidden_states=True)
            cache = run.past_key_values
            hidden += list(run.hidden_states[-1][0].float())
            seq += rest
            full = torch.cat([full, embed(torch.tensor([new + rest], device=device)).to(full)], dim=1)
        if seq:
            written = torch.cat([prompt, embed(torch.tensor([seq], device=device)).to(prompt)], dim=1)
            self._keep_prefix(written[:, :cache.get_seq_length()], cache)
        return seq, torch.stack(hidden) if hidden else None

    def _keep_prefix(self, embeds: torch.Tensor, cache: Any) -> None:
        if isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers):
            with self._prefix_lock:
                self._prefix = (embeds, cache)

    def _reuse_prefix(self, prompt: torch.Tensor) -> DynamicCache | None:
        """The KV cache of the last prompt run alone, cut to the part it shares with `prompt`
        (compared by embeddings: the same tokens and the same media). The system prompt, and in
        a conversation every earlier turn, then go through the LLM once, not on every request.
        The kept cache is never written to: this returns a copy of its prefix."""
        with self._prefix_lock:
            if self._prefix is None:
                return None
            embeds, cache = self._prefix
            n = min(embeds.shape[1], prompt.shape[1] - 1)  # generate needs at least one new token
            if n < 1:
                return None
            same = (embeds[0, :n] == prompt[0, :n].to(embeds)).all(-1).long().cumprod(0)
            common = int(same.sum())
            if common == 0:
                return None
            reused = DynamicCache()
            for i, layer in enumerate(cache.layers):
                reused.update(layer.keys[..., :common, :].clone(), layer.values[..., :common, :].clone(), i)
            return reused

    def _left_pad(self, prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, L_i, H] prompts -> ([B, L, H] embeddings, [B, L] mask), padded on the left."""
        if len(prompts) == 1:
            return prompts[0], torch.ones(prompts[0].shape[:2], dtype=torch.long)
        length = max(p.shape[1] for p in prompts)
        pad_row = self.llm.get_input_embeddings()(torch.tensor([pad])).to(prompts[0])
        embeds = pad_row.expand(len(prompts), length, -1).clone()
        mask = torch.zeros(len(prompts), length, dtype=torch.long)
        for b, p in enumerate(prompts):
            embeds[b, length - p.shape[1]:] = p[0]
            mask[b, length - p.shape[1]:] = 1
        return embeds, mask

    def find_runs(self, ids: list[int]) -> list[SignalRun]:
        """Complete runs of signal tokens in generated ids (a run cut off by max_new_tokens is ignored)."""
        runs = []
        for m, sig in self.signal.ids.items():
            n = len(sig)
            for start in range(len(ids) - n + 1):
                if ids[start:start + n] == list(sig):
                    runs.append(SignalRun(m, list(range(start, start + n))))
        return sorted(runs, key=lambda r: r.positions[0])

    def reads(self, run: SignalRun, reply_start: int, earlier: Sequence[SignalRun] = ()) -> list[int]:
        """The positions an output projector reads for `run`, in a row whose assistant reply begins at
        `reply_start`: the run's signal tokens, or (`config.projector.reads == "reply"`) the reply's
        words before it as well, where the request's attributes are named; from the reply's start or,
        when `earlier` runs of the row end inside the reply, from the end of the last of them, so
        that in "Here is X. [IMG..] Here is Y. [AUD..]" the sound's projector reads only its sentence."""
        first = run.positions[0]
        if self.config.projector.reads == "reply":
            first = max([reply_start] + [r.positions[-1] + 1 for r in earlier if r.positions[-1] < run.positions[0]])
        return list(range(first, run.positions[-1] + 1))

    def signal_string(self, modality: str) -> str:
        """A modality's run of signal tokens as text, as the assistant writes it after the sentence that names it."""
        return "".join(self.signal.tokens[modality])

    def reply_text(self, ids: list[int]) -> str:
        """The reply with signal tokens (and other special tokens) removed; a run between two sentences
        leaves one space, not two ("Here is X. [IMG..] Here is Y." -> "Here is X. Here is Y.")."""
        return re.sub(r"(?<=\S)  +(?=\S)", " ", self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    # -- 4. signal tokens -> decoder conditioning ---------------------------------------------
    def project_runs(self, runs: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """The one projection, for training and inference: per run (modality, last-layer states [n, H],
        input embeddings [n, H] of the tokens its projector reads) -> the output projector's
        conditioning [tokens, dim]. Runs of a modality go through their projector together, right-padded
        to the longest (the padding masked) when they read different lengths."""
        out: list[torch.Tensor | None] = [None] * len(runs)
        for modality in dict.fromkeys(m for m, _, _ in runs):
            index = [i for i, (m, _, _) in enumerate(runs) if m == modality]
            hidden, embeds, padding = pad_rows([runs[i][1] for i in index], [runs[i][2] for i in index])
            for i, c in zip(index, self.output_projectors[modality](hidden, embeds, padding)):
                out[i] = c
        return out

    def signal_conditioning(self, turns: Sequence[Turn], ids: list[int], runs: list[SignalRun],
                            hidden: torch.Tensor | None = None) -> list[torch.Tensor]:
        """For each run of a reply (`ids`, written after the prompt of `turns`): its conditioning [tokens, dim].

        `hidden` ([n, H], the states of `ids[:n]` kept by `generate`) saves the forward pass: the states
        and the tokens' input embeddings go through `project_runs`. Runs reaching past it (a forced
        run, or one cut at max_new_tokens) take the states of one `forward` over the conversation and reply.
        """
        if not runs:
            return []
        if hidden is not None and max(run.positions[-1] for run in runs) < hidden.shape[0]:
            embeds = self.llm.get_input_embeddings()(torch.tensor(ids, device=hidden.device))
            for run in runs:
                run.reads = self.reads(run, 0, runs)
            return self.project_runs([(run.modality, hidden[run.reads], embeds[run.reads]) for run in runs])
        full = self.forward([Conversation(list(turns), list(ids))])
        offset = full.batch.prompt_lengths[0]
        made = {run.positions[0] - offset: c for run, c in zip(full.runs[0], full.conditionings[0])}
        return [made[run.positions[0]] for run in runs]

    # -- trained state ------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What AnyGPT trains itself, except LoRA: projectors and the new rows of the embedding tables."""
        state = {f"input_projector.{k}": v for k, v in self.input_projector.state_dict().items()}
        state |= {f"output_projectors.{k}": v for k, v in self.output_projectors.state_dict().items()}
        state["signal_rows.input"] = self.llm.get_input_embeddings().weight[self.base_vocab:]
        out_emb = self.llm.get_output_embeddings()
        if out_emb is not None and out_emb.weight.data_ptr() != self.llm.get_input_embeddings().weight.data_ptr():
            state["signal_rows.output"] = out_emb.weight[self.base_vocab:]
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_prefix()
        self.input_projector.load_state_dict(
            {k.removeprefix("input_projector."): v for k, v in state.items() if k.startswith("input_projector.")})
        self.output_projectors.load_state_dict(
            {k.removeprefix("output_projectors."): v for k, v in state.items() if k.startswith("output_projectors.")})
        self.llm.get_input_embeddings().weight[self.base_vocab:] = state["signal_rows.input"]
        if "signal_rows.output" in state:
            self.llm.get_output_embeddings().weight[self.base_vocab:] = state["signal_rows.output"]
