"""The toy world's instruction set (NExT-GPT stage 3, MosIT-style): dialogs in many phrasings.

Four kinds, so the LLM learns when to make media and when not to:
- ask:  a user attaches an image, sound or clip and asks about it ("what colour is the shape?");
- make: a user asks for a picture, sound or clip ("draw a red circle", "play a rising sweep");
- mix:  both, and several outputs at once ("describe this clip, then draw its shape in green");
- chat: plain questions that must get plain text and no signal token.

An assistant turn is stored as its words plus a list of outputs (modality + caption + `at`, the
character offset in the words where the output's signal tokens go: right after the sentence that
names it, as NExT-GPT's replies place them; an output without `at` goes after the words). The
trainer writes the signal tokens there, so the file does not depend on how many signal tokens a
config uses; the captions are the decoder-side targets.

One dialog a line of `dialogs.jsonl`, next to the toy dataset whose files it attaches:
  {"id", "kind", "split", "turns": [{"role", "text", "media": [{"modality", "path"}], "outputs": [...]}],
   "expect": {"outputs": [modality, ...], "answer": {attribute: value}}}
  with outputs {"modality", "caption", "at"}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from anygpt.config import OUTPUT_MODALITIES
from anygpt.data import toyworld as tw
from anygpt.data.manifest import read_manifest
from anygpt.errors import InputError

KINDS = ("ask", "make", "mix", "chat")

# (question, attribute it asks about; "all" = describe). Held-out wordings never occur in train.
ASK = {
    "image": {
        "train": [("what colour is the shape?", "color"), ("what shape is this?", "shape"),
                  ("describe this picture.", "all"), ("which colour do you see?", "color"),
                  ("what is drawn here?", "all"), ("tell me the shape in this image.", "shape")],
        "heldout": [("name the colour of the object.", "color"), ("what figure is shown?", "shape"),
                    ("what does this image show?", "all")],
    },
    "audio": {
        "train": [("what kind of sound is this?", "kind"), ("describe this sound.", "all"),
                  ("what do you hear?", "kind"), ("is the pitch rising, falling or steady?", "kind")],
        "heldout": [("what is this audio clip?", "kind"), ("tell me about this recording.", "all")],
    },
    "video": {
        "train": [("which way is the shape moving?", "direction"), ("describe this clip.", "all"),
                  ("what colour is the moving shape?", "color"), ("where does the object go?", "direction"),
                  ("what happens in this video?", "all")],
        "heldout": [("in which direction does it travel?", "direction"), ("summarise this animation.", "all")],
    },
}
ANSWER = {
    "color": ["It is {color}.", "The shape is {color}.", "{color}."],
    "shape": ["It is a {shape}.", "A {shape}.", "The shape is a {shape}."],
    "kind": ["It is a {kind}.", "A {kind}.", "That is a {kind}."],
    "direction": ["It moves {direction}.", "The shape moves {direction}.", "It goes {direction}."],
}
MAKE = {
    "image": {"train": ["draw {desc}", "make a picture of {desc}", "show me {desc}", "can you draw {desc}?",
                        "create an image of {desc}", "paint {desc}", "I would like a picture of {desc}"],
              "heldout": ["please sketch {desc}", "could you render {desc} as an image?"]},
    "audio": {"train": ["play {desc}", "make the sound of {desc}", "generate audio of {desc}", "let me hear {desc}",
                        "can you produce {desc}?", "synthesise {desc}"],
              "heldout": ["I want to listen to {desc}", "please sound out {desc}"]},
    "video": {"train": ["animate {desc}", "make a clip of {desc}", "show me a video of {desc}",
                        "create an animation of {desc}", "can you film {desc}?", "generate a video of {desc}"],
              "heldout": ["please make a short movie of {desc}", "render a clip where we see {desc}"]},
}
REPLY = {"image": ["Here is {desc}.", "Sure, here is a picture of {desc}.", "I drew {desc}."],
         "audio": ["Here is {desc}.", "Sure, listen to {desc}.", "Here is the sound of {desc}."],
         "video": ["Here is {desc}.", "Sure, here is a clip of {desc}.", "I animated {desc}."]}
CHAT = {
    "train": [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("How many days are in a week?", "There are seven days in a week."),
        ("What is two plus two?", "Two plus two is four."),
        ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
        ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
        ("Say hello.", "Hello! How can I help you today?"),
        ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
        ("Give me a synonym for happy.", "A synonym for happy is joyful."),
        ("What language is spoken in Spain?", "Spanish is spoken in Spain."),
        ("Thank you!", "You're welcome!"),
    ],
    "heldout": [
        ("What is the capital of Italy?", "The capital of Italy is Rome."),
        ("How many hours are in a day?", "There are 24 hours in a day."),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ],
}


def pick(rng: np.random.Generator, options: list):
    return options[rng.integers(len(options))]


def _describe(labels: dict[str, str], modality: str) -> str:
    if modality == "image":
        return f"a {labels['color']} {labels['shape']}"
    if modality == "video":
        return f"a {labels['color']} {labels['shape']} moving {labels['direction']}"
    # a sound's length too: a request or answer without it cannot ask for a long warbling tone, and
    # the LLM learnt to drop it (README, "Sounds in the dialogs say their length")
    return f"a {labels['length']} {labels['kind']}" if "length" in labels else f"a {labels['kind']}"


def _make_target(rng: np.random.Generator, modality: str, split: str) -> dict[str, str]:
    """Attributes of something to make: any combination of the split."""
    return tw.sample(modality, rng, split).labels()


def _ask(rng, modality, example, split, kinds_say_length=False):
    question, attribute = pick(rng, ASK[modality][split])
    labels = {k: v for k, v in example["attributes"].items() if k in tw.LABELS[modality]}
    if attribute == "all":
        answer = _describe(labels, modality).capitalize() + "."
        expected = {k: labels[k] for k in ("color", "shape", "kind", "length", "direction") if k in labels}
    elif kinds_say_length and modality == "audio" and "length" in labels:
        # a sound's kind answered with its length ("It is a long noise burst."): answered with the
        # kind alone, the LLM took a held-out "tell me about this recording." for a kind question and
        # dropped the length (README, "Reading lengths with the LoRA")
        answer = pick(rng, ANSWER[attribute]).format(kind=f"{labels['length']} {labels['kind']}")
        expected = {attribute: labels[attribute]}
    else:
        answer = pick(rng, ANSWER[attribute]).format(**labels)
        expected = {attribute: labels[attribute]}
    answer = answer[0].upper() + answer[1:]
    return question, answer, expected


def make_dialog(rng: np.random.Generator, kind: str, split: str, pool: dict[str, list[dict]],
                two_outputs: float = 0.2, kinds_say_length: bool = False) -> dict:
    """One dialog of a kind; `pool` maps input modality -> manifest examples to attach; a "make"
    dialog asks for two items with probability `two_outputs`, else one. `kinds_say_length`: a question
    about a sound's kind is answered with its length too."""
    if kind == "chat":
        q, a = pick(rng, CHAT[split])
        turns = [{"role": "user", "text": q, "media": []}, {"role": "assistant", "text": a, "outputs": []}]
        return {"kind": kind, "turns": turns, "expect": {"outputs": [], "answer": {}}}
    if kind == "ask":
        modality = pick(rng, [m for m in ASK if pool.get(m)])
        example = pick(rng, pool[modality])
        q, a, expected = _ask(rng, modality, example, split, kinds_say_length)
        turns = [{"role": "user", "text": q, "media": [{"modality": modality, "path": example["path"]}]},
                 {"role": "assistant", "text": a, "outputs": []}]
        return {"kind": kind, "turns": turns, "expect": {"outputs": [], "answer": expected, "about": modality}}
    if kind == "make":
        n_out = 2 if rng.random() >= 1 - two_outputs else 1
        modalities = list(rng.choice(OUTPUT_MODALITIES, size=n_out, replace=False))
        asks, replies, outputs = [], [], []
        for m in modalities:
            desc = _describe(_make_target(rng, m, split), m)
            asks.append(pick(rng, MAKE[m][split]).format(desc=desc).rstrip("?"))
            replies.append(pick(rng, REPLY[m]).format(desc=desc))
            # each output's run right after its own sentence ("Here is X. [IMG..] Here is Y. [AUD..]")
            outputs.append({"modality": m, "caption": desc, "at": len(" ".join(replies))})
        text = " and ".join(asks) + ("?" if rng.random() < 0.3 else "")
        turns = [{"role": "user", "text": text, "media": []},
                 {"role": "assistant", "text": " ".join(replies), "outputs": outputs}]
        return {"kind": kind, "turns": turns, "expect": {"outputs": modalities, "answer": {}}}
    # mix: describe an attached image or clip, then draw its shape in another colour
    modality = pick(rng, [m for m in ("image", "video") if pool.get(m)])
    example = pick(rng, pool[modality])
    labels = {k: v for k, v in example["attributes"].items() if k in tw.LABELS[modality]}
    colours = [c for c in tw.COLORS if c != labels["color"]]
    if split == "train":  # the picture it asks for must be a training pair: the held-out ones are the eval's
        colours = [c for c in colours if (c, labels["shape"]) not in tw.HELDOUT["image"]]
    colour = pick(rng, colours)
    thing = "picture" if modality == "image" else "clip"
    text = f"describe this {thing}, then draw its shape in {colour}"
    desc = f"a {colour} {labels['shape']}"
    answer = f"{_describe(labels, modality).capitalize()}. Here is {desc}."
    turns = [{"role": "user", "text": text, "media": [{"modality": modality, "path": example["path"]}]},
             {"role": "assistant", "text": answer, "outputs": [{"modality": "image", "caption": desc, "at": len(answer)}]}]
    expected = {k: labels[k] for k in ("color", "shape", "direction") if k in labels}
    return {"kind": kind, "turns": turns, "expect": {"outputs": ["image"], "answer": expected, "about": modality}}


def request_dialog(rng: np.random.Generator, example: dict, split: str = "train") -> dict:
    """A one-output "make" dialog for a manifest example: the user asks for the example's own caption
    (the toy world's many wordings; `make_dialog` words every request "a {colour} {shape}"), the
    assistant replies as in the dialogs and makes it. For fitting output projectors on the states the
    LLM has at inference, where the reply text comes before the signal tokens."""
    m = example["modality"]
    labels = {k: v for k, v in example["attributes"].items() if k in tw.LABELS[m]}
    text = pick(rng, MAKE[m][split]).format(desc=example["caption"])
    reply = pick(rng, REPLY[m]).format(desc=_describe(labels, m))
    turns = [{"role": "user", "text": text, "media": []},
             {"role": "assistant", "text": reply,
              "outputs": [{"modality": m, "caption": example["caption"], "at": len(reply)}]}]
    return {"kind": "make", "turns": turns, "expect": {"outputs": [m], "answer": {}}}


def novel_sound_requests(n: int, seed: int, kinds: tuple[str, ...] = tw.NOVEL_SOUNDS) -> list[dict]:
    """n `request_dialog`s for sounds of kinds the world does not have, each worded with its kind and
    its length ("play a long chord"): in the world's training split each kind has one length, so a
    projector fitted on the world's requests alone writes the length that goes with the kind (README,
    "Replies that repeat the request"). Text only: no sound is rendered."""
    rng = np.random.default_rng([seed, 5])
    out = []
    for _ in range(n):
        labels = tw.sample_novel_audio(rng, kinds=tuple(kinds)).labels()
        caption = pick(rng, tw.wordings("audio", labels, "train"))
        out.append(request_dialog(rng, {"modality": "audio", "attributes": labels, "caption": caption}))
    return out


def echo_sound_requests(n: int, seed: int) -> list[dict]:
    """n `request_dialog`s for sounds of the training split whose reply repeats the request's phrase
    for the kind ("please play a long pitch rising from low to high" -> "Here is a long pitch rising
    from low to high."), as the LLM replies to wordings it did not learn; the training dialogs reply
    "a long rising sweep" whatever the wording. For the sound projector's fit: without them it has
    never read such a reply (README, "Replies that repeat the request")."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for _ in range(n):
        labels = tw.sample("audio", rng).labels()
        phrase = pick(rng, tw.PHRASES["kind"][labels["kind"]])
        desc = re.sub(r"^a (?=[aeiou])", "an ", f"a {labels['length']} {phrase}")
        reply = pick(rng, REPLY["audio"]).format(desc=desc)
        turns = [{"role": "user", "text": pick(rng, MAKE["audio"]["train"]).format(desc=desc), "media": []},
                 {"role": "assistant", "text": reply, "outputs": [{"modality": "audio", "caption": desc, "at": len(reply)}]}]
        out.append({"kind": "make", "turns": turns, "expect": {"outputs": ["audio"], "answer": {}}})
    return out


def make_dialogs(manifest: str | Path, n: int, *, seed: int, split: str = "train",
                 mix: dict[str, float] | None = None, two_outputs: float = 0.2,
                 kinds_say_length: bool = False) -> Path:
    """Write `dialogs.jsonl` beside a toy-world manifest, attaching that dataset's files. `two_outputs`:
    the share of "make" requests that ask for two items (the eval's held-out dialogs keep 0.2)."""
    manifest = Path(manifest)
    examples = read_manifest(manifest)
    pool = {m: [e for e in examples if e["modality"] == m] for m in OUTPUT_MODALITIES}
    weights = mix or {"ask": 0.35, "make": 0.35, "mix": 0.1, "chat": 0.2}
    kinds, p = list(weights), np.array(list(weights.values())) / sum(weights.values())
    lines = []
    for i in range(n):
        rng = np.random.default_rng([seed, tw.SPLITS.index(split), i])
        dialog = make_dialog(rng, kinds[rng.choice(len(kinds), p=p)], split, pool, two_outputs, kinds_say_length)
        for turn in dialog["turns"]:  # paths relative to the dialogs file, as in manifests
            for item in turn.get("media", []):
                item["path"] = str(Path(item["path"]).relative_to(manifest.parent.resolve()))
        lines.append({"id": f"dialog-{i:06d}", "split": split, **dialog})
    out = manifest.parent / "dialogs.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def is_dialogs(path: str | Path) -> bool:
    """Whether a JSONL file holds dialogs (its first line has "turns") rather than a manifest; a
    missing or unreadable file is neither (the readers name what is wrong with it)."""
    try:
        with open(path) as f:
            return "turns" in json.loads(next(line for line in f if line.strip()))
    except (OSError, StopIteration, json.JSONDecodeError, TypeError):  # TypeError: a line that is not an object
        return False


def read_dialogs(path: str | Path) -> list[dict]:
    """Dialogs of a JSONL file, media paths resolved against its folder; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such dialogs file")
    dialogs = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            dialog = json.loads(raw)
            turns = dialog["turns"]
            assert isinstance(turns, list) and turns and all(t["role"] in ("user", "assistant") for t in turns)
            for turn in turns:
                for item in turn.get("media", []):
                    item["path"] = str((path.parent / item["path"]).resolve())
                for output in turn.get("outputs", []):
                    at = output.get("at", len(turn["text"]))
                    assert type(at) is int and 0 <= at <= len(turn["text"]), \
                        f"output 'at' {at!r} is not an offset in the turn's text"
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
            raise InputError(f"{path} line {number}: not a dialog ({type(e).__name__}: {e})") from None
        dialogs.append(dialog)
    if not dialogs:
        raise InputError(f"{path}: no dialogs")
    return dialogs
