"""One training loop for every trainable part: resumable, deterministic, with a progress bar.

Batches come from `batch_fn(step)`, a pure function of the step number, so a run that
resumes from its last checkpoint sees exactly the batches it would have seen without
the interruption. Checkpoints hold only tensors and plain values (safetensors for the
weights, `torch.load(weights_only=True)`-safe files for the rest) and are written to a
temporary folder, then renamed, so a crash never leaves a broken one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

console = Console(stderr=True)


@dataclass
class LoopSettings:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip_grad: float = 1.0
    warmup: int = 50
    save_every: int = 200
    log_every: int = 25  # plain log lines when stderr is not a terminal (CI, nohup)
    seed: int = 0
    max_steps: int | None = None  # stop early (smoke runs) without changing the schedule
    device: str = "auto"  # "auto": CUDA when there is one, else CPU; the module comes back on the CPU
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU, where it is slower than float32)


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when one is visible; anything else is taken as a torch device name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (nested tuples, lists and dicts) to `device`; leave the rest."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _lr_factor(step: int, s: LoopSettings) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < s.warmup:
        return (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def train(name: str, module: torch.nn.Module, batch_fn: Callable[[int], Any],
          loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], out_dir: str | os.PathLike,
          settings: LoopSettings, *, on_step: Callable[[int], None] | None = None,
          extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
          load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, Any]:
    """Train the parameters of `module` that require grad; returns a summary dict.

    `loss_fn(batch)` returns (loss, extra scalars to log). The checkpoint lives in
    `out_dir/checkpoint/`; a run restarts from it when present. `on_step(step)` runs after each
    optimizer step (an EMA update, say); `extra_state()` gives tensors the checkpoint carries too
    (the EMA weights) and `load_extra_state` puts them back on resume.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    module.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=settings.amp and device.type == "cuda")
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
    start = _resume(out / "checkpoint", module, optimizer, load_extra_state)
    torch.manual_seed(settings.seed + start)
    end = min(settings.steps, settings.max_steps) if settings.max_steps else settings.steps
    history: list[float] = []
    t0 = time.perf_counter()
    module.train()
    with Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task(name, total=end, completed=start, info="")
        for step in range(start, end):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(step, settings)
            logs: dict[str, float] = {}
            for micro in range(settings.grad_accum):
                with autocast:
                    loss, extra = loss_fn(to_device(batch_fn(step * settings.grad_accum + micro), device))
                (loss / settings.grad_accum).backward()
                logs = {"loss": loss.item(), **extra}
            torch.nn.utils.clip_grad_norm_(params.values(), settings.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step)
            history.append(logs["loss"])
            info = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
            bar.update(task, completed=step + 1, info=info)
            if not console.is_terminal and ((step + 1) % settings.log_every == 0 or step + 1 == end):
                elapsed = time.perf_counter() - t0
                eta = elapsed / (step + 1 - start) * (end - step - 1)
                console.print(f"{name} step {step + 1}/{end} {info} elapsed {elapsed:.0f}s eta {eta:.0f}s")
            if (step + 1) % settings.save_every == 0 or step + 1 == end:
                _save_checkpoint(out / "checkpoint", module, optimizer, step + 1,
                                 extra_state() if extra_state is not None else None)
    module.eval().to("cpu")
    summary = {"name": name, "steps": end, "resumed_from": start, "seconds": round(time.perf_counter() - t0, 1),
               "device": str(device),
               "first_loss": history[0] if history else None,
               "final_loss": sum(history[-20:]) / len(history[-20:]) if history else None,
               "settings": asdict(settings)}
    console.print(f"{name}: steps {start}->{end}, loss {summary['first_loss']} -> {summary['final_loss']}, "
                  f"{summary['seconds']} s")
    return summary


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     extra: dict[str, torch.Tensor] | None = None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".ckpt-"))
    save_file(_trainable_state(module), tmp / "trainable.safetensors")
    if extra:
        save_file({k: v.detach().contiguous() for k, v in extra.items()}, tmp / "extra.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _resume(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
            load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None) -> int:
    if not (folder / "state.json").is_file():
        return 0
    state = load_file(folder / "trainable.safetensors")
    missing = module.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"checkpoint {folder} does not fit this model: unexpected {missing.unexpected_keys[:5]}")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if load_extra_state is not None and (folder / "extra.safetensors").is_file():
        load_extra_state(load_file(folder / "extra.safetensors"))
    step = json.loads((folder / "state.json").read_text())["step"]
    console.print(f"resuming from {folder} at step {step}")
    return step
