"""Which of a sound's tokens does the LLM read its length from? For each world kind, sounds rendered
at 1.2 s and at 1.85 s, and the probability of "long" against "short" at the length word of the
answer "A long ...", with the last view (the loudness tail) swapped for the other length's.

    python scripts/length_swap.py MODEL_FOLDER [SOUNDS_PER_KIND]

README, "Which token the length is read from", has the table this prints for one run.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile

import numpy as np
import torch

from anygpt.data import toyworld as tw
from anygpt.model import Turn, ViewsApart
from anygpt.pipeline import AnyGPT

SECONDS = {"short": 1.2, "long": 1.85}


@torch.inference_mode()
def p_long(app: AnyGPT, item) -> float:
    """P("long") / (P("long") + P("short")) where the answer about `item` writes its length."""
    model = app.model
    tok = model.tokenizer
    long_id, short_id = (tok(" " + w, add_special_tokens=False).input_ids[0] for w in ("long", "short"))
    turns = [Turn("user", "describe this sound.", [("audio", item)]), Turn("assistant", "A long sound.")]
    batch = model.prepare_inputs_labels([turns])
    logits = model.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits[0]
    at = max(i for i, t in enumerate(batch.ids[0]) if t == long_id) - 1
    p = logits[at].float().softmax(-1)
    return float(p[long_id] / (p[long_id] + p[short_id]))


def main(folder: str, per_kind: int = 4, seed: int = 5) -> None:
    app = AnyGPT.from_pretrained(folder)
    app.model.eval()
    views = len(app.model.views("audio"))
    if not views:
        raise SystemExit(f"{folder}: the model reads a sound as one token; there is no view to swap")
    rng = np.random.default_rng(seed)
    work = tempfile.mkdtemp(prefix="length-swap-")
    print(f"{'kind':14s} short  long  long+short-tail  short+long-tail")
    for kind in tw.AUDIO_KINDS:
        rows = []
        for k in range(per_kind):
            spec = tw.sample("audio", rng)
            while spec.kind != kind:
                spec = tw.sample("audio", rng)
            path = {}
            for length, seconds in SECONDS.items():
                path[length] = f"{work}/{k}-{length}.wav"
                tw.save_audio(path[length], tw.render(dataclasses.replace(spec, duration=seconds)))
            swapped = {a: ViewsApart(path[a], (path[a],) * (views - 1) + (path[b],))
                       for a, b in (("long", "short"), ("short", "long"))}
            rows.append([p_long(app, path["short"]), p_long(app, path["long"]),
                         p_long(app, swapped["long"]), p_long(app, swapped["short"])])
        m = np.mean(rows, 0)
        print(f"{kind:14s} {m[0]:.2f}   {m[1]:.2f}  {m[2]:.2f}            {m[3]:.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
