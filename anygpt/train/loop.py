"""One training loop for every trainable part, on Hugging Face Accelerate: resumable, deterministic,
data-parallel over any number of processes, with a progress bar.

- Batches come from `batch_fn(step)`, a pure function of the (micro-)step number that gives the
  GLOBAL batch. Each process takes its own contiguous slice of it (`shard`), so N processes see
  together, step for step, the examples one process sees, and a run that resumes from its last
  checkpoint sees exactly the batches it would have seen without the interruption.
- The loss runs inside the module Accelerate prepares (DDP across processes; FSDP or DeepSpeed
  when `accelerate launch` is given such a config), so gradients are averaged across processes.
  A loss that is a mean over a global batch split unevenly can use `mean_over_processes`.
- Mixed precision (bfloat16 autocast on CUDA), gradient accumulation (`Accelerator.accumulate`)
  and checkpoints (`Accelerator.save_state` / `load_state`, with hooks that keep only the
  trained tensors, in `trainable.safetensors`) are Accelerate's. The learning-rate schedule is a pure
  function of the step, and the torch RNG is reseeded from (seed, step, process) every step.
- One process (plain `python` or `anygpt train ...`) is the default. `torchrun --nproc_per_node 2
  ...` runs two data-parallel processes (gloo on a CPU, NCCL on GPUs).
- Only the first process prints, and appends each step's figures to `out_dir/log.jsonl` (after a
  resume the steps since the checkpoint appear again: the last line of a step is the one that
  counts); the figures are means over all processes.

Checkpoints are written to a temporary folder, then renamed, so a crash never leaves a broken one;
they hold only tensors and plain values (safetensors for the weights, files that
`torch.load(weights_only=True)` reads for the rest).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file


def _env_rank() -> int:
    """This process's rank as the launcher (torchrun, accelerate launch) sets it; 0 alone."""
    return int(os.environ.get("RANK", "0") or 0)


console = Console(stderr=True, quiet=_env_rank() != 0)  # rank 0 prints


def _quiet_libraries() -> None:
    """The other processes leave the libraries' progress bars and warnings to rank 0 as well."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    logging.getLogger("accelerate").setLevel(logging.ERROR)


if _env_rank() != 0:
    _quiet_libraries()


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


# -- processes ------------------------------------------------------------------------------------
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_count() -> int:
    return torch.distributed.get_world_size() if _distributed() else 1


def process_index() -> int:
    return torch.distributed.get_rank() if _distributed() else _env_rank()


def is_main_process() -> bool:
    """True in the process that prints and writes the run's files (rank 0; the only one alone)."""
    return process_index() == 0


def shard(batch: Any, index: int, count: int) -> Any:
    """Process `index` of `count`'s slice of a global batch: rows [i*n//count, (i+1)*n//count) of every
    tensor, array and list in it. Tuples (named ones too) and dicts are structure and are walked into;
    a list is a batch of items (a list of samples); anything else (numbers, strings, 0-d tensors) is
    kept whole. Every process needs at least one row."""
    if count == 1:
        return batch

    def cut(x: Any) -> Any:
        if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim > 0 or isinstance(x, list):
            n = len(x)
            if n < count:
                raise ValueError(f"a batch of {n} cannot be shared between {count} processes: "
                                 "make the global batch at least as large as the number of processes")
            return x[index * n // count:(index + 1) * n // count]
        if isinstance(x, tuple):
            parts = [cut(v) for v in x]
            return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    return cut(batch)


def mean_over_processes(total: torch.Tensor, count: float | int | torch.Tensor) -> torch.Tensor:
    """A mean over the whole global batch from this process's share: `total / count` with both summed
    over all processes, as this process's loss. The gradients, averaged across processes (DDP), and
    the logged loss, averaged across processes by the loop, are then those of one process reading the
    whole batch, however unevenly it was split (tokens per sample, runs per sample). Alone: total / count."""
    count = torch.as_tensor(count, dtype=torch.float64, device=total.device).detach().clone()
    world = 1
    if _distributed():
        world = torch.distributed.get_world_size()
        torch.distributed.all_reduce(count)
    return total * world / count.clamp_min(1).to(total.dtype)


def gather_rows(x: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
    """Every process's rows of `x` (dim 0), concatenated in rank order, on every process: the whole
    global batch, for a loss that compares rows with each other (a contrastive term's negatives).
    Processes may hold different numbers of rows, none included. Gradients flow back to each process's
    own rows when `differentiable` (torch.distributed.nn's all_gather sums them over processes; DDP's
    average then gives the gradient of one process reading the whole batch). Alone: `x`."""
    if not _distributed():
        return x
    world = torch.distributed.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(n) for n in sizes]
    padded = torch.cat([x, x.new_zeros(max(sizes) - len(x), *x.shape[1:])])
    if differentiable and torch.is_grad_enabled():
        from torch.distributed.nn.functional import all_gather

        # every process must join the backward's collective, a process with no rows of its own too
        parts = all_gather(padded if padded.requires_grad else padded.requires_grad_())
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _LossModule(torch.nn.Module):
    """The module being trained with its loss as forward, so that the loss runs inside the wrapper
    Accelerate prepares (DDP's gradient hooks, FSDP's unsharding, autocast) whatever the loss calls."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]]):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch)


def _accelerator(settings: LoopSettings):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    device = settings.device
    cuda = device != "cpu" and (device.startswith("cuda") or torch.cuda.is_available())
    if device.startswith("cuda:") and _env_rank() == 0 and "WORLD_SIZE" not in os.environ:
        torch.cuda.set_device(torch.device(device))  # one process on a named GPU
    # The launcher's mixed precision (accelerate launch --mixed_precision / a config) wins; else ours.
    mixed = None if os.environ.get("ACCELERATE_MIXED_PRECISION") else ("bf16" if settings.amp and cuda else "no")
    AcceleratorState._reset_state()  # another train() in this process may have asked for other settings
    return Accelerator(cpu=not cuda, mixed_precision=mixed, gradient_accumulation_steps=settings.grad_accum,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True,
                                                                      broadcast_buffers=False)])


def _lr_factor(step: int, s: LoopSettings) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < s.warmup:
        return (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def _seed(seed: int, step: int, rank: int) -> None:
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def _mean_logs(accelerator, logs: dict[str, float]) -> dict[str, float]:
    """Each logged figure averaged over the processes that logged it (all of them, usually)."""
    if accelerator.num_processes == 1:
        return logs
    from accelerate.utils import gather_object

    keys = sorted(set().union(*gather_object([sorted(logs)])))
    values = torch.tensor([[logs.get(k, 0.0), float(k in logs)] for k in keys], dtype=torch.float64,
                          device=accelerator.device)
    torch.distributed.all_reduce(values)
    return {k: float(v / max(n, 1.0)) for k, (v, n) in zip(keys, values.tolist())}


def train(name: str, module: torch.nn.Module, batch_fn: Callable[[int], Any],
          loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], out_dir: str | os.PathLike,
          settings: LoopSettings, *, on_step: Callable[[int], None] | None = None,
          extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
          load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None) -> dict[str, Any]:
    """Train the parameters of `module` that require grad; returns a summary dict.

    `batch_fn(k)` gives the k-th global (micro-)batch (optimizer step s reads k = s * grad_accum + m);
    each process keeps its `shard`. `loss_fn(batch)` returns (loss, extra scalars to log) on this
    process's share; it must call collectives (`mean_over_processes`) the same way in every process.
    The checkpoint lives in `out_dir/checkpoint/`; a run restarts from it when present. `on_step(step)`
    runs after each optimizer step (step counts from 0; an EMA update, say), in every process;
    `extra_state()` gives tensors the checkpoint carries too (the EMA weights; taken from the first
    process) and `load_extra_state` puts them back on resume, in every process.
    """
    out = Path(out_dir)
    accelerator = _accelerator(settings)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
    model, optimizer = accelerator.prepare(_LossModule(module, loss_fn), optimizer)
    hooks = [accelerator.register_save_state_pre_hook(_keep_trainable(module)),
             accelerator.register_load_state_pre_hook(_load_trainable(module))]
    accelerator.wait_for_everyone()
    start = _resume(accelerator, out / "checkpoint", module, optimizer, load_extra_state)
    end = min(settings.steps, settings.max_steps) if settings.max_steps else settings.steps
    history: list[float] = []
    t0 = time.perf_counter()
    model.train()
    with Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=not main) as bar:
        task = bar.add_task(name, total=end, completed=start, info="")
        for step in range(start, end):
            _seed(settings.seed, step, rank)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(step, settings)
            sums: dict[str, float] = {}
            for micro in range(settings.grad_accum):
                batch = shard(batch_fn(step * settings.grad_accum + micro), rank, world)
                with accelerator.accumulate(model):
                    loss, extra = model(to_device(batch, accelerator.device))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and settings.clip_grad:
                        accelerator.clip_grad_norm_(list(params.values()), settings.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in {"loss": loss.item(), **extra}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / settings.grad_accum
            if on_step is not None:
                on_step(step)
            logs = _mean_logs(accelerator, sums)
            history.append(logs["loss"])
            if main:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **logs, "lr": optimizer.param_groups[0]["lr"],
                                        "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
            info = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
            bar.update(task, completed=step + 1, info=info)
            if not console.is_terminal and ((step + 1) % settings.log_every == 0 or step + 1 == end):
                elapsed = time.perf_counter() - t0
                eta = elapsed / (step + 1 - start) * (end - step - 1)
                console.print(f"{name} step {step + 1}/{end} {info} elapsed {elapsed:.0f}s eta {eta:.0f}s")
            if (step + 1) % settings.save_every == 0 or step + 1 == end:
                _save_checkpoint(accelerator, out / "checkpoint", step + 1, extra_state)
    accelerator.wait_for_everyone()
    for hook in hooks:
        hook.remove()
    accelerator.free_memory()
    module.eval().to("cpu")
    seconds = time.perf_counter() - t0
    summary = {"name": name, "steps": end, "resumed_from": start, "seconds": round(seconds, 1),
               "device": str(accelerator.device), "processes": world,
               "distributed": getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)),
               "seconds_per_step": round(seconds / (end - start), 3) if end > start else None,
               "first_loss": history[0] if history else None,
               "final_loss": sum(history[-20:]) / len(history[-20:]) if history else None,
               "losses": history, "settings": asdict(settings)}
    console.print(f"{name}: steps {start}->{end}, loss {summary['first_loss']} -> {summary['final_loss']}, "
                  f"{summary['seconds']} s on {world} process{'es' if world > 1 else ''}")
    return summary


# -- checkpoints ----------------------------------------------------------------------------------
def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def _keep_trainable(module: torch.nn.Module):
    """save_state hook: instead of Accelerate's model file (the whole state dict under the wrapper's
    names), `trainable.safetensors` with the trained tensors only, under the module's own names."""
    def hook(models: list, weights: list, output_dir: str) -> None:
        if weights:
            weights.clear()
            if is_main_process():
                save_file(_trainable_state(module), Path(output_dir) / "trainable.safetensors")
    return hook


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    missing = module.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"checkpoint {where} does not fit this model: unexpected {missing.unexpected_keys[:5]}")


def _load_trainable(module: torch.nn.Module):
    """load_state hook: load what `_keep_trainable` wrote (and take the model off Accelerate's list)."""
    def hook(models: list, input_dir: str) -> None:
        file = Path(input_dir) / "trainable.safetensors"
        if models and file.is_file():
            _load_into(module, load_file(file), file.parent)
            models.clear()
    return hook


def _is_deepspeed(accelerator) -> bool:
    return getattr(accelerator.distributed_type, "value", None) == "DEEPSPEED"


def _save_checkpoint(accelerator, folder: Path, step: int,
                     extra_state: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
    """Every process: Accelerate's state (trained tensors, optimizer, RNG) in a temporary folder, then
    the first process swaps it in for the old checkpoint."""
    tmp, old = folder.parent / ".checkpoint-tmp", folder.parent / ".checkpoint-old"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    deepspeed = _is_deepspeed(accelerator)  # DeepSpeed writes its own files: keep the frozen weights out
    accelerator.save_state(str(tmp), **({"exclude_frozen_parameters": True} if deepspeed else {}))
    if main:
        if extra_state is not None:
            extra = extra_state()
            if extra:
                save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, tmp / "extra.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if main:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(accelerator, folder: Path, module: torch.nn.Module, optimizer,
            load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None) -> int:
    if not (folder / "state.json").is_file():
        old = folder.parent / ".checkpoint-old"  # killed between the two renames of a save
        if not (old / "state.json").is_file():
            return 0
        folder = old
    if _is_deepspeed(accelerator):
        accelerator.load_state(str(folder), load_module_strict=False)
    elif (folder / "optimizer.bin").is_file():
        accelerator.load_state(str(folder))
    else:  # the loop's own layout before Accelerate: the optimizer in optimizer.pt
        _load_into(module, load_file(folder / "trainable.safetensors"), folder)
        optimizer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if load_extra_state is not None and (folder / "extra.safetensors").is_file():
        load_extra_state(load_file(folder / "extra.safetensors"))
    step = json.loads((folder / "state.json").read_text())["step"]
    console.print(f"resuming from {folder} at step {step}")
    return step
