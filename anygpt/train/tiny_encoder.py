"""Train the tiny ImageBind on the toy world: every modality bound to its caption.

ImageBind binds each modality to images; the toy world has no photographs, so here each
modality is bound to the text of its caption instead (the text branch trains too). The
loss is a symmetric InfoNCE with several positives: two items whose attributes are the
same (two red circles) count as matches, so a batch never pushes apart equal things.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anygpt.toyworld import LABELS, read_manifest
from anygpt.train.loop import LoopSettings, console, train
from encoders import ImageBindEncoder

MODALITIES = ("image", "audio", "video", "depth")


@dataclass
class Pool:
    """One modality's training items, preprocessed once (float16 to halve the memory)."""

    inputs: torch.Tensor
    tokens: torch.Tensor  # caption token ids [N, 77]
    labels: torch.Tensor  # attribute class per item [N]


def label_of(example: dict) -> str:
    attrs = example["attributes"]
    return "|".join(str(attrs[k]) for k in LABELS[example["modality"]])


def build_pools(encoder: ImageBindEncoder, examples: list[dict], per_modality: int) -> dict[str, Pool]:
    pools = {}
    for m in MODALITIES:
        rows = [e for e in examples if e["modality"] == m][:per_modality]
        if not rows:
            continue
        console.print(f"preparing {len(rows)} {m} items")
        chunks = []
        for i in range(0, len(rows), 32):
            x = encoder.prepare(m, [r["path"] for r in rows[i:i + 32]])
            if m == "video":  # square frames: ImageBind's 3 spatial crops are identical, keep one per clip
                x = x[:, ::3]
            chunks.append(x.half())
        names = sorted({label_of(r) for r in rows})
        pools[m] = Pool(torch.cat(chunks), encoder.tokenize([r["caption"] for r in rows]),
                        torch.tensor([names.index(label_of(r)) for r in rows]))
    return pools


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with equal labels is a positive."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    positives = (labels[:, None] == labels[None, :]).float()
    target = positives / positives.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_tiny_encoder(data: str | Path, out: str | Path, *, steps: int = 300, batch_size: int = 16,
                       per_modality: int = 400, lr: float = 1e-3, seed: int = 0, max_steps: int | None = None) -> dict:
    """Train from a toy-world manifest; writes `out/encoder` (save_pretrained) and returns the summary."""
    torch.manual_seed(seed)
    encoder = ImageBindEncoder.tiny(seed=seed)
    pools = build_pools(encoder, read_manifest(data, check_files=True), per_modality)

    def batch_fn(step: int) -> dict[str, tuple[torch.Tensor, ...]]:
        rng = np.random.default_rng([seed, step])
        batch = {}
        for m, pool in pools.items():
            idx = torch.from_numpy(rng.choice(len(pool.labels), size=min(batch_size, len(pool.labels)), replace=False))
            batch[m] = (pool.inputs[idx].float(), pool.tokens[idx], pool.labels[idx])
        return batch

    def loss_fn(batch) -> tuple[torch.Tensor, dict[str, float]]:
        losses = {m: contrastive_loss(encoder(m, x), encoder("text", t), y) for m, (x, t, y) in batch.items()}
        return sum(losses.values()) / len(losses), {m: v.item() for m, v in losses.items()}

    settings = LoopSettings(steps=steps, lr=lr, weight_decay=0.01, warmup=min(30, steps // 5 + 1),
                            save_every=50, seed=seed, max_steps=max_steps)
    summary = train("tiny-encoder", encoder, batch_fn, loss_fn, out, settings)
    encoder.save_pretrained(Path(out) / "encoder")
    return summary
