"""Ask the tiny preset a few requests, as the web demo does, and draw its answers side by side.

    python scripts/demo_answers.py docs/demo-answers.png "Draw a blue triangle, please." "Draw a red circle."

A picture is drawn as one tile, a clip as its frames in a row (first frame left).

The demo calls the same `AnyGPT.chat`; this makes the README's picture of it reproducible.
"""

from __future__ import annotations

import sys

from PIL import Image, ImageDraw

from anygpt import AnyGPT


def main(out: str, prompts: list[str], tile: int = 192, frame: int = 64) -> None:
    model = AnyGPT.from_preset("tiny")
    replies = []
    for prompt in prompts:
        reply = model.chat(prompt)
        replies.append(reply)
        print(f"{prompt!r} -> {reply.text!r}, {len(reply.images)} image(s), {len(reply.videos)} clip(s)")
    clips = [len(r.videos[0].frames) for r in replies if r.videos]
    width = max([300] + [n * frame + 12 for n in clips])
    canvas = Image.new("RGB", (width * len(prompts), tile + 48), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        x = i * width
        draw.text((x + 6, 4), f"you: {prompt}", fill=(0, 0, 0))
        draw.text((x + 6, 20), f"anygpt: {reply.text}"[:80], fill=(0, 0, 128))
        # a picture fills the tile; a clip is a row of frames, under the picture when the answer has both
        side = tile - frame - 4 if reply.videos else tile
        if reply.images:
            picture = reply.images[0].image.convert("RGB").resize((side, side), Image.NEAREST)
            canvas.paste(picture, (x + (width - side) // 2, 44))
        if reply.videos:
            y = 44 + (tile - frame if reply.images else (tile - frame) // 2)
            for k, still in enumerate(reply.videos[0].frames):
                small = Image.fromarray(still).convert("RGB").resize((frame, frame), Image.NEAREST)
                canvas.paste(small, (x + 6 + k * frame, y))
    canvas.save(out)
    print(f"wrote {out}")

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
