"""NExT-GPT's three training stages, for any backbone (docs/architecture.md, "Training stages").

1. encoder-side alignment: X -> caption. Trains the input projector (LM loss on the caption). Given
   dialogs instead of a manifest, it trains the input projector alone on the dialogs that attach
   media (questions about them): after stage 3, this teaches the model to read media without touching
   what it writes for text-only requests (README, "Reading media after stage 3"). `novel_audio`
   adds sounds of kinds the world lacks, at both lengths, described with their length: in the
   world's training split each kind has one length, so otherwise a reply's length follows the kind
   (README, "Sounds the world does not have, read by the LLM"). `grey_clips` adds grey clips asked
   which way they move, so that a direction is read apart from the colour it came with in training;
   `cut_sounds` world sounds of the training split cut shorter than either length, asked their kind,
   so that a kind is read apart from the length it came with. `paint_clips` adds clips of the
   training split painted in colours the world does not have, asked their direction or described.
   `lora` lets the LoRA train beside the input projector on those questions: a frozen LoRA keeps
   writing the length each world kind had in training. That changes what the LLM writes for
   text-only requests too; trained on the questions alone it routed 75% of held-out requests
   (README, "Reading lengths with the LoRA"). `length_from_novel` leaves the length words of
   answers about world sounds unlearnt, so that only the novel sounds teach a length.
   `caption_sounds` and `caption_clips` put captions where the sound or clip goes (the encoder's
   text branch reads them): words come with every length and direction (README, "Lengths and
   directions learnt from words"). All of these extra samples join stage 3 as well.
2. decoder-side alignment: caption -> signal tokens. Trains the signal-token rows and the output
   projectors: LM loss on the signal tokens, plus the alignment between the projector output and the
   decoder's own text encoding of the caption (masked MSE + InfoNCE, anygpt/train/alignment.py).
   Decoders stay frozen.
3. instruction tuning: mixed dialogs. LoRA on the LLM, plus projectors and signal-token rows.

Every stage reads a manifest (stage 1-2: the toy world's, or any JSONL of path + caption; stage 3:
dialogs), starts from `init` (a save_pretrained folder, e.g. the previous stage's output) or the
config, and writes `out/model` with `AnyGPT.save_pretrained`; `out/checkpoint` lets it resume.

The forward is the model's (`AnyGPTModel.forward`, the one inference uses too). A stage only says
what differs: which parameters train (`_freeze_except`) and which loss terms apply (`StageLoss`:
the LM loss, plus, in stages 2-3, `align_weight * align_loss(pred, target, mask)` at each run of
signal tokens). The loop (`anygpt.train.loop`) runs on one process or several (torchrun).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anygpt.config import OUTPUT_MODALITIES, AnyGPTConfig
from anygpt.config import audio_windows as config_audio_windows
from anygpt.data import toyworld as tw
from anygpt.data.dialogs import ANSWER, ASK, MAKE, is_dialogs, pick, read_dialogs
from anygpt.data.manifest import read_manifest
from anygpt.model import EITHER, AnyGPTModel, AnyGPTOutput, CaptionStandIn, Turn, ViewsApart
from anygpt.pipeline import AnyGPT
from anygpt.train.alignment import alignment_loss, caption_mask
from anygpt.train.loop import LoopSettings, console, gather_rows, is_main_process, mean_over_processes, train

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


def _write_once(path: Path, write: Callable[[Path], None]) -> str:
    """`path`, written by `write` unless it is there already (through a temporary name, so that a run
    killed mid-write leaves no half file to be reused)."""
    if not path.exists():
        tmp = path.with_name(f"tmp-{path.name}")
        write(tmp)
        tmp.replace(path)
    return str(path)


def novel_sound_samples(n: int, folder: Path, seed: int, kinds: tuple[str, ...] = tw.NOVEL_SOUNDS, *,
                        learn_kinds: bool = True, apart: tuple[bool, ...] = ()) -> list[Sample]:
    """n "describe this sound" questions about sounds of kinds the world does not have, answered with
    their kind and length ("A long chord."), as the dialogs' describe answers are. `learn_kinds=False`:
    the kind words are not learnt, only the length. `apart` (for each of the model's audio views,
    whether it is read at the told length, e.g. True for its loudness tail alone): every other sound
    is then read everywhere else at the other length (the same sound drawn out or cut short,
    `ViewsApart`), so that only those views tell a length. The sounds are written once to `folder`
    (WAV) and reused when it is there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    questions = [q for q, attribute in ASK["audio"]["train"] if attribute == "all"] + DESCRIBE["audio"]
    out = []
    for i, item in enumerate(tw.novel_sounds(n, seed, kinds)):
        path = _write_once(folder / f"{i:05d}.wav", lambda tmp: tw.save_audio(tmp, item["array"]))
        labels = item["attributes"]
        answer = f"A {labels['length']} {labels['kind']}."
        unlearnt = () if learn_kinds else (labels["kind"],)
        heard = path
        if any(apart) and i % 2:
            other = next(k for k in tw.LENGTHS if k != labels["length"])
            spec = dataclasses.replace(item["spec"], length=other,
                                       duration=round(float(rng.uniform(*tw.LENGTHS[other])), 3))
            at_other = _write_once(folder / f"{i:05d}-other.wav", lambda tmp: tw.save_audio(tmp, tw.render(spec)))
            heard = ViewsApart(at_other, tuple(path if told else at_other for told in apart))
        out.append(Sample([Turn("user", questions[rng.integers(len(questions))], [("audio", heard)]),
                           Turn("assistant", answer, unlearnt=unlearnt)]))
    return out


def grey_clip_samples(n: int, folder: Path, seed: int) -> list[Sample]:
    """n "which way is it moving?" questions about grey clips of the training split (the mean of the
    colour channels, as the tiny encoder's grey views), answered with the direction. Every colour of
    the world's training split lacks one direction; grey, every direction goes with no colour. The
    clips are written once to `folder` (MP4) and reused when it is there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4])
    questions = [q for q, attribute in ASK["video"]["train"] if attribute == "direction"]
    out = []
    for i in range(n):
        spec = tw.sample("video", rng)
        grey = tw.render(spec).astype(np.float32).mean(-1, keepdims=True).repeat(3, -1).round().astype(np.uint8)
        path = _write_once(folder / f"{i:05d}.mp4", lambda tmp: tw.save_video(tmp, grey))
        answer = ANSWER["direction"][rng.integers(len(ANSWER["direction"]))].format(direction=spec.direction)
        out.append(Sample([Turn("user", questions[rng.integers(len(questions))], [("video", path)]),
                           Turn("assistant", answer)]))
    return out


# Colours the toy world does not have (`paint_clip_samples`), each far from every palette colour.
PAINT_COLOURS = {"white": (235, 235, 235), "pink": (255, 160, 210), "brown": (125, 75, 35), "cyan": (30, 225, 235)}


def paint_clip_samples(n: int, folder: Path, seed: int) -> list[Sample]:
    """n questions about clips of the training split painted in a colour the world does not have
    (`PAINT_COLOURS`), half "which way is it moving?" answered with the direction, half "describe this
    clip" answered as the dialogs do ("A pink circle moving left."). Each world colour lacks one
    direction in the training split; these colours come with every direction, and unlike grey clips
    they are named in the answer, so a description learns to say a direction whatever colour it names.
    The clips are written once to `folder` (MP4) and reused when it is there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    asks = {a: [q for q, attribute in ASK["video"]["train"] if attribute == a] for a in ("direction", "all")}
    names = sorted(PAINT_COLOURS)
    out = []
    for i in range(n):
        colour = names[rng.integers(len(names))]
        spec = dataclasses.replace(tw.sample("video", rng), color=colour, rgb=PAINT_COLOURS[colour])
        path = _write_once(folder / f"{i:05d}.mp4", lambda tmp: tw.save_video(tmp, tw.render(spec)))
        if i % 2:
            question = asks["all"][rng.integers(len(asks["all"]))]
            answer = f"A {colour} {spec.shape} moving {spec.direction}."
        else:
            question = asks["direction"][rng.integers(len(asks["direction"]))]
            answer = ANSWER["direction"][rng.integers(len(ANSWER["direction"]))].format(direction=spec.direction)
        out.append(Sample([Turn("user", question, [("video", path)]), Turn("assistant", answer)]))
    return out


# Cut sounds last this long (seconds): below both length classes (toyworld.LENGTHS), so no cut sound is
# a held-out kind-length pair, as the tiny encoder's cut copies (anygpt/train/tiny_encoder.py).
CUT_SECONDS = (0.4, 0.95)
# Stretched sounds last longer than the long class, for the same reason: with them and the cut sounds,
# a world kind comes at lengths other than its training one without forming a held-out pair (README,
# "A sound's head, and sounds past either length").
STRETCH_SECONDS = (2.05, 2.4)


def cut_sound_samples(n: int, folder: Path, seed: int, say_length: bool = False,
                      seconds: tuple[float, float] = CUT_SECONDS) -> list[Sample]:
    """n "what kind of sound is this?" questions about world sounds of the training split rendered
    0.4-0.95 s long (`CUT_SECONDS`; or `seconds`, e.g. `STRETCH_SECONDS`), answered with their kind
    alone, or with `say_length` as the dialogs answer a kind, with the length the kind has in the
    training split ("It is a long pulsing beeps."), that word not learnt (`unlearn_lengths`): an
    answer without a length word would teach the LLM to drop the length of world sounds. The sounds
    are written once to `folder` (WAV) and reused when it is there."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(seconds[1] >= lo and seconds[0] <= hi for lo, hi in tw.LENGTHS.values()):
        raise ValueError(f"sounds of {seconds[0]}-{seconds[1]} s overlap a length class {tw.LENGTHS}: "
                         "some would be held-out kind-length pairs")
    rng = np.random.default_rng([seed, 6] if seconds == CUT_SECONDS else [seed, 7])
    questions = [q for q, attribute in ASK["audio"]["train"] if attribute == "kind"]
    out = []
    for i in range(n):
        spec = tw.sample("audio", rng)
        kind = f"{spec.labels()['length']} {spec.kind}" if say_length else spec.kind
        spec = dataclasses.replace(spec, duration=round(float(rng.uniform(*seconds)), 3))
        path = _write_once(folder / f"{i:05d}.wav", lambda tmp: tw.save_audio(tmp, tw.render(spec)))
        answer = ANSWER["kind"][rng.integers(len(ANSWER["kind"]))].format(kind=kind)
        sample = Sample([Turn("user", questions[rng.integers(len(questions))], [("audio", path)]),
                         Turn("assistant", answer)])
        out.append(unlearn_lengths(sample) if say_length else sample)
    return out


def caption_samples(modality: str, n: int, seed: int) -> list[Sample]:
    """n questions about captions in place of sounds or clips (`CaptionStandIn`, read by the encoder's
    text branch): "a short whistle" asked about as a sound, "a pink circle moving up" as a clip. In the
    world's training split a sound's kind gives its length away and a clip's colour rules out one
    direction; words come with every length and direction whatever the kind or colour
    (`toyworld.CAPTION_SOUNDS`, `CAPTION_COLOURS`). The words of the kind or colour are not learnt, so
    that they teach the length or direction alone and not to call a world sound "whistle" (measured: the
    slot they leave untrained got made-up names, "A long down.": README, "Lengths and directions
    learnt from words")."""
    if modality not in ("audio", "video"):
        raise ValueError(f"caption samples are sounds (audio) or clips (video), got {modality!r}")
    rng = np.random.default_rng([seed, 8 if modality == "audio" else 9])
    out = []
    for _ in range(n):
        if modality == "audio":
            labels = {"kind": pick(rng, tw.CAPTION_SOUNDS), "length": pick(rng, tuple(tw.LENGTHS))}
            question, attribute = pick(rng, ASK["audio"]["train"])
            answer = (f"A {labels['length']} {labels['kind']}." if attribute == "all" else
                      pick(rng, ANSWER["kind"]).format(kind=f"{labels['length']} {labels['kind']}"))
            caption, unlearnt = pick(rng, tw.SOUND_CAPTIONS).format(**labels), (labels["kind"],)
        else:
            labels = {"color": pick(rng, tw.CAPTION_COLOURS), "shape": pick(rng, tw.SHAPES),
                      "direction": pick(rng, tw.DIRECTIONS)}
            question, attribute = pick(rng, [qa for qa in ASK["video"]["train"] if qa[1] != "color"])
            answer = ("A {color} {shape} moving {direction}." if attribute == "all" else
                      pick(rng, ANSWER["direction"])).format(**labels)
            caption, unlearnt = pick(rng, tw.CLIP_CAPTIONS).format(**labels), (labels["color"],)
        out.append(Sample([Turn("user", question, [(modality, CaptionStandIn(caption))]),
                           Turn("assistant", answer, unlearnt=unlearnt)]))
    return out


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
                runs = sorted(runs, key=lambda o: o.get("at", len(t["text"])))  # in reply order (stable)
                turns.append(Turn("assistant", place_runs(model, t["text"], runs)))
                outputs += [(o["modality"], o["caption"]) for o in runs]
        out.append(Sample(turns, outputs))
    return out


def _answers_changed(sample: Sample, about_sound: bool, **changes) -> Sample:
    """The sample with `changes` (`Turn` fields) on its assistant turns when it has a sound (attached,
    or made with `about_sound=False`), else the sample itself."""
    sounds = ([m for t in sample.turns for m, _ in t.media] if about_sound else [m for m, _ in sample.outputs])
    if "audio" not in sounds:
        return sample
    turns = [dataclasses.replace(t, **changes) if t.role == "assistant" else t for t in sample.turns]
    return dataclasses.replace(sample, turns=turns)


def unlearn_lengths(sample: Sample) -> Sample:
    """The sample with the length words of its answers about attached sounds not learnt. In the world's
    training split each kind comes at one length, so the length an answer says is given away by the
    kind; learnt from those answers, the LLM writes a held-out long noise burst "short". Left out,
    only the novel sounds (`novel_sound_samples`, every kind at both lengths) teach the length, read
    from the sound, as the tiny encoder's `--length-from-novel` (README, "Reading lengths with the LoRA")."""
    return _answers_changed(sample, True, unlearnt=tuple(tw.LENGTHS))


def unlearn_made_lengths(sample: Sample) -> Sample:
    """The sample with the length words of its replies that make a sound not learnt. In the world's
    training split each kind comes at one length, so every "Here is a short rising sweep." teaches
    the words "short rising sweep" together, which could make an answer about a held-out long rising
    sweep start "A short". The reply still copies the asked length (33 of 33 held-out requests); the
    answers about sounds did not change (README, "Which token the length is read from")."""
    return _answers_changed(sample, False, unlearnt=tuple(tw.LENGTHS))


def hedge_length_words(sample: Sample) -> Sample:
    """The sample with the length words of its answers about attached sounds learnt as soft targets
    (`Turn.hedged`: 0.9 on the length said, 0.1 on the other). A sure target pushes the length's logit
    without bound, and for a world sound, whose kind comes at one length, the kind can push it; a
    hedged one is met at one margin by every sound, world or novel, which leaves a kind less to add
    (measured: the LLM still chose the length by kind, README, "Lengths and directions learnt from
    words")."""
    return _answers_changed(sample, True, hedged=(("short", "long"), ("long", "short")))


def even_length_words(sample: Sample) -> Sample:
    """The sample with the length words of its answers about attached sounds learnt half and half
    (`Turn.hedged` at 0.5): that a describe answer names a length is learnt, which length is not. Left
    out (`unlearn_lengths`), an LLM with a fresh LoRA learns from the world's answers to leave the
    length out ("A rising sweep."); here the sound, through the novel sounds (every kind at both
    lengths), decides which (README, "A sound's tail and a clip's grey copy as more tokens")."""
    return _answers_changed(sample, True, hedged=(("short", "long", 0.5), ("long", "short", 0.5)))


def any_length_words(sample: Sample) -> Sample:
    """The sample with the length words of its answers about attached sounds learnt as "either word"
    (`Turn.hedged` at `EITHER`): that a describe answer names a length is learnt, and nothing about
    which. Half and half (`even_length_words`) is a target too: met for world sounds, whose length
    the sound does show, it teaches the LLM to stop reading the length from a world sound; here only
    the novel sounds (every kind at both lengths) decide which (README, "Which token the length is
    read from")."""
    return _answers_changed(sample, True, hedged=(("short", "long", EITHER), ("long", "short", EITHER)))


def place_runs(model: AnyGPTModel, text: str, runs: list[dict]) -> str:
    """The assistant's words with each output's signal tokens written at its `at` (after the words
    when it has none): "Here is a red circle. [IMG0]..[IMG3] Here is a rising sweep. [AUD0]..".
    `runs` sorted by `at`."""
    pieces, done = [], 0
    for o in runs:
        at = o.get("at", len(text))
        pieces += [text[done:at], " " + model.signal_string(o["modality"])]
        done = at
    return ("".join(pieces) + text[done:]).strip()


def tokenize_sample(model: AnyGPTModel, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (-100 everywhere but the assistant's words, signal tokens and end of turn)."""
    ids, labels = model.tokenize_conversation(sample.turns)
    return torch.tensor(ids), torch.tensor(labels)


def default_align_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE over the caption's real tokens + InfoNCE across the batch (`alignment_loss`): a loss
    a constant conditioning cannot minimise (an MSE over every position, padding included, was)."""
    return alignment_loss(pred, target, mask)[0]


AlignLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def stage_loss(lm: torch.Tensor, align: torch.Tensor | None, align_weight: float) -> torch.Tensor:
    """How a stage composes its terms: the LM loss, plus the weighted decoder-side alignment."""
    return lm if align is None else lm + align_weight * align


class StageLoss:
    """A stage's loss on a batch of samples: the model's forward (`AnyGPTModel.forward`), then its LM
    loss plus, when `align_weight` > 0, `align_loss(pred, target, mask)` between each run's conditioning
    and the decoder's own text encoding of its caption. Both terms are means over the global batch
    (the LM loss over its labelled tokens, the alignment over its runs) however the loop splits it
    between processes."""

    def __init__(self, app: AnyGPT, mse_weight: float, align_loss: AlignLoss = default_align_loss):
        self.model, self.app, self.align_weight, self.align_loss = app.model, app, mse_weight, align_loss
        self._targets: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def mse_weight(self) -> float:  # the old name of align_weight
        return self.align_weight

    def target(self, modality: str, caption: str) -> torch.Tensor:
        """The decoder's own text encoding of the caption (what its UNet was trained to follow)."""
        key = (modality, caption)
        if key not in self._targets:
            self._targets[key] = self.app.decoder(modality).encode_text([caption])[0].float().cpu()
        return self._targets[key]

    def target_mask(self, modality: str, captions: list[str]) -> torch.Tensor:
        """[R, tokens]: the target positions that hold each caption's real tokens (the decoder's own)."""
        return caption_mask(self.app.decoder(modality), captions)

    def alignment(self, batch: list[Sample], out: AnyGPTOutput) -> torch.Tensor:
        """`align_loss` per output modality over all the runs of the global batch (gathered from every
        process: the contrastive term's negatives are the whole batch's), averaged over those runs."""
        groups: dict[str, tuple[list[torch.Tensor], list[str]]] = {}
        for b, s in enumerate(batch):
            for run, pred, (modality, caption) in zip(out.runs[b], out.conditionings[b], s.outputs):
                if run.modality != modality:
                    raise ValueError(f"a run of {run.modality} signal tokens where the sample says {modality}")
                groups.setdefault(modality, ([], []))
                groups[modality][0].append(pred)
                groups[modality][1].append(caption)
        total, count = out.loss_sum.new_zeros(()), 0
        for modality, projector in sorted(self.model.output_projectors.items()):  # the same order everywhere
            preds, captions = groups.get(modality, ([], []))
            if preds:
                pred = torch.stack(preds)
                target = torch.stack([self.target(modality, c) for c in captions]).to(pred)
                mask = self.target_mask(modality, captions).to(pred)
            else:
                pred = target = out.loss_sum.new_zeros(0, projector.tokens, projector.out_dim)
                mask = out.loss_sum.new_zeros(0, projector.tokens)
            pred, target, mask = gather_rows(pred, differentiable=True), gather_rows(target), gather_rows(mask)
            if len(pred):
                total = total + self.align_loss(pred, target, mask.bool()) * len(pred)
                count += len(pred)
        return total / max(count, 1)

    def __call__(self, batch: list[Sample]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model([s.turns for s in batch])
        lm = mean_over_processes(out.loss_sum, out.label_count)
        logs = {"lm": lm.item()}
        align = None
        if self.align_weight > 0:
            align = self.alignment(batch, out)
            logs["mse"] = align.item()
        return stage_loss(lm, align, self.align_weight), logs


def _train_lora(model: AnyGPTModel) -> None:
    for name, p in model.llm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)


def _freeze_except(model: AnyGPTModel, stage: int, lora: bool = False) -> None:
    """Which parameters each stage trains (and, for the signal rows, a hook that keeps the old rows).
    `lora`: stage 1 trains the LoRA too."""
    model.requires_grad_(False)
    if stage == 1:
        model.input_projector.requires_grad_(True)
        if lora:
            _train_lora(model)
        return
    model.output_projectors.requires_grad_(True)
    if stage == 3:
        model.input_projector.requires_grad_(True)
        _train_lora(model)
    base = model.base_vocab
    for emb in {model.llm.get_input_embeddings(), model.llm.get_output_embeddings()} - {None}:
        emb.weight.requires_grad_(True)
        if not getattr(emb.weight, "_anygpt_row_hook", False):
            emb.weight.register_hook(lambda g: torch.cat([torch.zeros_like(g[:base]), g[base:]]))
            emb.weight._anygpt_row_hook = True


def train_stage(stage: int, data: str | Path, out: str | Path, *, config: AnyGPTConfig | None = None,
                init: str | Path | None = None, steps: int = 300, batch_size: int = 8, lr: float = 1e-3,
                grad_accum: int = 1, mse_weight: float = 1.0, seed: int = 0, max_steps: int | None = None,
                limit: int | None = None, save_every: int = 50, gradient_checkpointing: bool = False,
                novel_audio: int = 0, novel_kinds: tuple[str, ...] = tw.NOVEL_SOUNDS, grey_clips: int = 0,
                cut_sounds: int = 0, paint_clips: int = 0, lora: bool = False,
                length_from_novel: bool = False, caption_sounds: int = 0, caption_clips: int = 0,
                fresh_lora: bool = False, hedge_lengths: bool = False, novel_kinds_unlearnt: bool = False,
                audio_windows: str | list | None = None, video_grey: bool = False,
                even_lengths: bool = False, video_still: bool = False, stretched_sounds: int = 0,
                audio_loudness: str | list | None = None, made_lengths_unlearnt: bool = False,
                any_lengths: bool = False, length_from_loudness: bool = False) -> dict:
    """Run one stage; writes out/model (save_pretrained) and returns the loop's summary.

    `batch_size` is the global batch: run under `torchrun --nproc_per_node N`, each process takes
    its share of every batch (the same examples per step as one process). `gradient_checkpointing`
    recomputes the LLM's activations in the backward pass (memory for time, for large backbones).
    Questions about media the world lacks join the samples of stages 1 and 3 (the stages that read
    media): `novel_audio` sounds of `novel_kinds`, at both lengths (`novel_sound_samples`, written
    under out/novel-audio); `grey_clips` grey clips asked their direction (`grey_clip_samples`, under
    out/grey-clips); `cut_sounds` world sounds cut short asked their kind (`cut_sound_samples`, under
    out/cut-sounds) and `stretched_sounds` likewise drawn out past the long class (under
    out/stretched-sounds); `paint_clips` clips in colours the world lacks (`paint_clip_samples`, under
    out/paint-clips); `caption_sounds` and `caption_clips` captions in place of sounds and clips
    (`caption_samples`). `lora` (stage 1 on dialogs, from a model with a LoRA): the LoRA trains too.
    `length_from_novel` (stage 1 on dialogs, or stage 3): the length words of the answers about the
    dialogs' sounds are not learnt (`unlearn_lengths`). `fresh_lora` (stage 3): the LoRA starts anew
    (the projectors and signal rows are kept), so what an earlier LoRA learnt (e.g. each world kind's
    training length) does not carry over. `hedge_lengths` (stages 1 and 3): the length words of every
    answer about a sound, world or novel, are learnt as soft targets (`hedge_length_words`).
    `novel_kinds_unlearnt`: the novel sounds teach their length only; their kind words are not learnt,
    so the LLM never learns to name a world sound by a novel kind heard at that sound's length.
    `audio_windows` (e.g. "1.5:"): the model reads each sound as its whole and these windows
    (`AnyGPTConfig.audio_windows`), from now on; its saved config keeps them; `audio_loudness` likewise
    windows read as their loudness alone (`AnyGPTConfig.audio_loudness_windows`). `video_grey`: likewise
    each clip as itself and its grey copy (`AnyGPTConfig.video_grey`), and `video_still` its middle
    frame as a picture (`AnyGPTConfig.video_still`). `even_lengths` (as
    `length_from_novel`, which it replaces): the length words of the answers about the dialogs'
    sounds are learnt half and half (`even_length_words`). `made_lengths_unlearnt` (stage 3): the length
    words of replies that make a sound are not learnt (`unlearn_made_lengths`). `any_lengths` (as
    `even_lengths`, which it replaces): either length word is right (`any_length_words`).
    `length_from_loudness` (with `novel_audio` and `audio_loudness`): every other novel sound is read
    at the other length but in its loudness windows (`novel_sound_samples`' `apart`)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    if (novel_audio or grey_clips or cut_sounds or stretched_sounds or paint_clips or caption_sounds
            or caption_clips) and stage == 2:
        raise ValueError("novel_audio, grey_clips, cut_sounds, stretched_sounds, paint_clips, caption_sounds "
                         "and caption_clips are for stages 1 and 3 (the stages that read media)")
    if (length_from_novel or even_lengths or any_lengths) and not (stage == 3 or (stage == 1 and is_dialogs(data))):
        raise ValueError("length_from_novel, even_lengths and any_lengths are for stage 1 on dialogs, or stage 3")
    if sum((length_from_novel, hedge_lengths, even_lengths, any_lengths)) > 1:
        raise ValueError("length_from_novel, hedge_lengths, even_lengths and any_lengths each replace the others: "
                         "give one")
    if hedge_lengths and stage == 2:
        raise ValueError("hedge_lengths is for stages 1 and 3")
    if made_lengths_unlearnt and stage != 3:
        raise ValueError("made_lengths_unlearnt is a stage-3 option (the stage that learns the replies)")
    if fresh_lora and stage != 3:
        raise ValueError("fresh_lora is a stage-3 option (stage 3 trains the LoRA)")
    if lora and stage != 1:
        raise ValueError("lora is a stage-1 option (stage 3 always trains the LoRA)")
    out = Path(out)
    if init is not None:
        app = AnyGPT.from_pretrained(init)
        if stage == 3 and (fresh_lora or not app.config.lora.enabled):
            app = _with_lora(app)
    elif config is not None:
        if stage == 3:
            config = config.model_copy(update={"lora": config.lora.model_copy(update={"enabled": True})})
        app = AnyGPT.from_config(config)
    else:
        raise ValueError("train_stage needs a config or an init folder")
    # (the model holds the app's config itself: it reads them from here on, and saves them)
    if audio_windows is not None:
        app.config.audio_windows = config_audio_windows(audio_windows)
    if audio_loudness is not None:
        app.config.audio_loudness_windows = config_audio_windows(audio_loudness)
    if length_from_loudness and not (novel_audio and app.config.audio_loudness_windows):
        raise ValueError("length_from_loudness needs novel_audio and loudness windows (audio_loudness)")
    app.config.video_grey |= video_grey
    app.config.video_still |= video_still
    if lora and not app.config.lora.enabled:
        raise ValueError(f"--lora: {init or 'the config'} has no LoRA to train (run stage 3 first)")
    model = app.model
    rng = np.random.default_rng(seed)
    if stage == 3:
        samples = stage3_samples(model, read_dialogs(data))
    elif stage == 1 and is_dialogs(data):
        samples = stage3_samples(model, [d for d in read_dialogs(data)
                                         if any(t.get("media") for t in d["turns"] if t["role"] == "user")])
    else:
        examples = read_manifest(data, check_files=True)
        samples = stage1_samples(examples, rng) if stage == 1 else stage2_samples(model, examples, rng)
    if length_from_novel:
        samples = [unlearn_lengths(s) for s in samples]
    if even_lengths:
        samples = [even_length_words(s) for s in samples]
    if any_lengths:
        samples = [any_length_words(s) for s in samples]
    if made_lengths_unlearnt:
        samples = [unlearn_made_lengths(s) for s in samples]
    if limit:
        samples = samples[:limit]
    if novel_audio:
        told = (False,) * len(app.config.audio_windows) + (True,) * len(app.config.audio_loudness_windows)
        samples += novel_sound_samples(novel_audio, out / "novel-audio", seed, novel_kinds,
                                       learn_kinds=not novel_kinds_unlearnt, apart=told if length_from_loudness else ())
    if grey_clips:
        samples += grey_clip_samples(grey_clips, out / "grey-clips", seed)
    say_length = length_from_novel or hedge_lengths or even_lengths or any_lengths
    cut = cut_sound_samples(cut_sounds, out / "cut-sounds", seed, say_length=say_length) if cut_sounds else []
    if stretched_sounds:
        cut += cut_sound_samples(stretched_sounds, out / "stretched-sounds", seed, seconds=STRETCH_SECONDS,
                                 say_length=say_length)
    if paint_clips:
        samples += paint_clip_samples(paint_clips, out / "paint-clips", seed)
    if caption_sounds:
        samples += caption_samples("audio", caption_sounds, seed)
    if caption_clips:
        samples += caption_samples("video", caption_clips, seed)
    if hedge_lengths:
        samples = [hedge_length_words(s) for s in samples]
    samples += cut  # their told lengths stay unlearnt
    if not samples:
        raise ValueError(f"{data}: nothing to train stage {stage} on")
    console.print(f"stage {stage}: {len(samples)} samples")
    _freeze_except(model, stage, lora)
    loss = StageLoss(app, mse_weight if stage > 1 else 0.0)

    def batch_fn(step: int) -> list[Sample]:
        idx = np.random.default_rng([seed, step]).choice(len(samples), min(batch_size, len(samples)), replace=False)
        return [samples[i] for i in idx]

    model.encoder.requires_grad_(False)
    if gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    summary = train(f"stage{stage}", model, batch_fn, loss, out,
                    LoopSettings(steps=steps, lr=lr, grad_accum=grad_accum, warmup=min(30, steps // 5 + 1),
                                 save_every=save_every, seed=seed, max_steps=max_steps))
    app.trained = True
    if is_main_process():
        app.save_pretrained(out / "model")
    return summary


def _with_lora(app: AnyGPT) -> AnyGPT:
    """The same model with a fresh LoRA adapter (stage 3 adds it to a stage-2 folder)."""
    config = app.config.model_copy(update={"lora": app.config.lora.model_copy(update={"enabled": True})})
    fresh = AnyGPT.from_config(config)
    fresh.model.load_trainable_state(app.model.trainable_state())
    return fresh
