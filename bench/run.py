"""AnyGPT benchmarks: where a request's time goes, on the `tiny` preset (or --preset/--config).

    make bench                       # the table
    .venv/bin/python bench/run.py --json --runs 5

Figures (issue 10's targets in brackets):
- cold start: a fresh process importing anygpt, loading the preset and answering one text
  request; the second of two starts, so the dequantised LLM cache is warm [<= 10 s on 2 cores];
- per request kind (median of --runs): end to end, split into encode / llm / project / decode,
  each request as the first of a new conversation (no KV cache kept from the one before);
- a conversation's second turn, from scratch and from the first turn's KV cache;
- pipeline overhead: end to end minus the raw component calls (ImageBind forward, the LLM's
  generate for the same number of tokens, the output projector, the diffusers pipeline call)
  timed in the same process on the same inputs [<= 5%]; printed on its own line per request kind,
  `overhead <kind>: <pct>%`, for scripts;
- the side-by-side baseline: NExT-GPT's own inference code loads the diffusion pipelines anew for
  each request; `reload per request` times that on the same parts in the same run (every decoder
  built from its folder again before each request) and `ratio` is it over end to end;
- batch: scripted jobs per minute, decoded together vs one by one [>= 1.5x];
- peak resident memory: a full run, and a text-only run that never loads a decoder [<= 2.5 GB].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = {  # name: (prompt, force, needs an image)
    "text->text": ("What is the capital of France?", (), False),
    "text->image": ("draw a red circle", ("image",), False),
    "text->audio": ("play a rising sweep", ("audio",), False),
    "text->video": ("animate a blue square moving right", ("video",), False),
    "image+text->text": ("what colour is the shape?", (), True),
}


def _child(code: str) -> dict:
    """Run `code` in a fresh Python; it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


COLD = """
import json, resource, time
t = time.perf_counter()
from anygpt import AnyGPT
from anygpt.config import paths_from_env
m = AnyGPT.load({preset!r}, {config!r}, paths=paths_from_env())
r = m.chat("What is the capital of France?", outputs=(), max_new_tokens=16)
s = time.perf_counter() - t
print(json.dumps({{"seconds": s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

FULL_MEMORY = """
import json, resource
from anygpt import AnyGPT
from anygpt.config import paths_from_env
m = AnyGPT.load({preset!r}, {config!r}, paths=paths_from_env())
for force in (("image",), ("audio",), ("video",)):
    m.chat("make something", force=force, max_new_tokens=8)
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "decoders": m.loaded_decoders}}))
"""


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


@torch.inference_mode()
def raw_components(app, prompt: str, force: tuple, image: Path | None, runs: int) -> tuple[float, float]:
    """(median end to end, median sum of the raw component calls) on the same inputs.

    The raw calls are the models alone: ImageBind's forward, the LLM's `generate` for as many
    tokens as the request's LLM wrote, the output projection of each run, and each decoder's
    `decode`. The prompt's embeddings and the signal tokens' states come from the model's own
    forward path (`prepare_inputs_labels`, `forward`), untimed.
    """
    from anygpt.model import Conversation, Turn

    model = app.model
    e2e, raw = [], []
    for i in range(runs):
        media = {"image": str(image)} if image else {}
        model.encoder.clear_cache()
        model.forget_prefix()
        t = time.perf_counter()
        r = app.chat(prompt, force=force, seed=i, **media)
        e2e.append(time.perf_counter() - t)

        model.encoder.clear_cache()
        spent = 0.0
        turns = [Turn("user", prompt, [("image", str(image))] if image else [])]
        t = time.perf_counter()
        if image:
            model.encoder.encode("image", [str(image)])  # ImageBind forward (cached by content for the next line)
        spent += time.perf_counter() - t
        embeds = model.prepare_inputs_labels([turns]).inputs_embeds
        n = r.trace.generated_tokens
        t = time.perf_counter()
        model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=model.tokenizer.pad_token_id)
        spent += time.perf_counter() - t
        reply = model.tokenizer(r.trace.raw_reply, add_special_tokens=False).input_ids
        out = model.forward([Conversation(turns, reply)], project=False)
        for run, state in zip(out.runs[0], out.states[0]):
            run_embeds = out.batch.inputs_embeds[0, run.reads]
            t = time.perf_counter()
            cond = model.project_runs([(run.modality, state, run_embeds)])[0]
            spent += time.perf_counter() - t
            settings = app.config.decoders[run.modality]
            size = settings.size_options()
            dec = app.decoder(run.modality)
            t = time.perf_counter()
            dec.decode(cond, seeds=[i], num_inference_steps=settings.num_inference_steps,
                       guidance_scale=settings.guidance_scale, **size)
            spent += time.perf_counter() - t
        raw.append(spent)
    return _median(e2e), _median(raw)


def reload_per_request(app, prompt: str, force: tuple, media: dict, runs: int) -> float:
    """Median end to end of a request whose decoders are built again from their folders first, as
    NExT-GPT's inference code loads its diffusion pipelines anew for every request."""
    times = []
    for i in range(runs):
        for modality in app.loaded_decoders:
            app.unload_decoder(modality)
        app.model.encoder.clear_cache()
        app.model.forget_prefix()
        t = time.perf_counter()
        app.chat(prompt, force=force, seed=i, **media)
        times.append(time.perf_counter() - t)
    return _median(times)


def second_turn(app, runs: int) -> dict[str, float]:
    """A conversation's second turn, from scratch and from the KV cache of the first."""
    first = app.chat("draw a red circle", force=("image",))
    cold, warm = [], []
    for i in range(runs):
        app.model.forget_prefix()
        t = time.perf_counter()
        app.chat("what colour was it?", history=first.history, outputs=(), seed=i)
        cold.append(time.perf_counter() - t)
        app.chat("draw a red circle", force=("image",))  # the first turn again: its KV cache is kept
        t = time.perf_counter()
        app.chat("what colour was it?", history=first.history, outputs=(), seed=i)
        warm.append(time.perf_counter() - t)
    return {"from_scratch_s": _median(cold), "from_cache_s": _median(warm)}


def batch_throughput(app, jobs: int) -> dict[str, float]:
    from apps.batch import Job, run_script

    todo = [Job(id=f"j{i}", prompt=f"draw shape {i}", outputs=["image"], seed=i, options={"max_new_tokens": 8})
            for i in range(jobs)]
    rates = {}
    for name, size in (("batched", jobs), ("one_by_one", 1)):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            summary = run_script(app, todo, out, batch_size=size, progress=False)
            assert summary.ok
            rates[f"{name}_jobs_per_min"] = 60 * jobs / (time.perf_counter() - t)
    rates["speedup"] = rates["batched_jobs_per_min"] / rates["one_by_one_jobs_per_min"]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--config", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the README's table")
    args = parser.parse_args()

    from anygpt import AnyGPT
    from anygpt.config import paths_from_env

    results: dict = {"machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                                f"{torch.get_num_threads()} threads"}
    code = COLD.format(preset=args.preset, config=args.config)
    _child(code)  # the first start fills the caches
    results["cold_start"] = _child(code)
    results["peak_memory_all_decoders"] = _child(FULL_MEMORY.format(preset=args.preset, config=args.config))

    app = AnyGPT.load(args.preset, args.config, paths=paths_from_env())
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "shape.png"
        pixels = np.full((64, 64, 3), 30, np.uint8)
        pixels[16:48, 16:48] = (220, 30, 30)
        Image.fromarray(pixels).save(image)
        requests = {}
        for name, (prompt, force, needs_image) in KINDS.items():
            media = {"image": str(image)} if needs_image else {}
            app.chat(prompt, force=force, **media)  # warm-up: loads the decoder
            stages: dict[str, list[float]] = {}
            for i in range(args.runs):
                app.model.encoder.clear_cache()
                app.model.forget_prefix()  # each request as the first of a new conversation
                r = app.chat(prompt, force=force, seed=i, **media)
                for k, v in r.trace.timings.items():
                    stages.setdefault(k, []).append(v)
            e2e, raw = raw_components(app, prompt, force, image if needs_image else None, args.runs)
            reload = reload_per_request(app, prompt, force, media, args.runs)
            requests[name] = {"end_to_end_s": e2e, "reload_per_request_s": reload, "reload_ratio": reload / e2e,
                              **{f"{k}_s": _median(v) for k, v in stages.items()},
                              "raw_components_s": raw, "overhead_pct": 100 * (e2e - raw) / e2e}
        results["requests"] = requests
    results["overhead_pct"] = {name: row["overhead_pct"] for name, row in requests.items()}  # for scripts
    results["second_turn"] = second_turn(app, args.runs)
    results["batch"] = batch_throughput(app, args.jobs)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    if args.markdown:
        print(markdown(results, args))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"AnyGPT bench ({args.preset}) on {results['machine']}")
    for col in ("request", "end to end s", "reload per request s", "ratio", "encode", "llm", "project", "decode",
                "raw calls s", "overhead"):
        table.add_column(col, justify="right")
    for name, row in results["requests"].items():
        decode = sum(v for k, v in row.items() if k.startswith("decode_"))
        table.add_row(name, f"{row['end_to_end_s']:.2f}", f"{row['reload_per_request_s']:.2f}",
                      f"{row['reload_ratio']:.1f}x", f"{row.get('encode_s', 0):.2f}", f"{row.get('llm_s', 0):.2f}",
                      f"{row.get('project_s', 0):.2f}", f"{decode:.2f}", f"{row['raw_components_s']:.2f}",
                      f"{row['overhead_pct']:.1f}%")
    console = Console(width=max(150, Console().width))  # ten columns: do not squeeze them into 80
    console.print(table)
    for name, row in results["requests"].items():  # one line each, for scripts
        print(f"overhead {name}: {row['overhead_pct']:+.1f}%")
    b = results["batch"]
    console.print(f"cold start to first reply: {results['cold_start']['seconds']:.1f} s "
                  f"(peak RSS {results['cold_start']['peak_rss_mb']:.0f} MB, no decoder loaded)")
    console.print(f"peak RSS with all three decoders: {results['peak_memory_all_decoders']['peak_rss_mb']:.0f} MB")
    console.print(f"second turn of a conversation: {results['second_turn']['from_scratch_s']:.2f} s from scratch, "
                  f"{results['second_turn']['from_cache_s']:.2f} s from the first turn's KV cache")
    console.print(f"batch of {args.jobs} image jobs: {b['batched_jobs_per_min']:.1f} jobs/min batched, "
                  f"{b['one_by_one_jobs_per_min']:.1f} one by one ({b['speedup']:.2f}x)")


def markdown(results: dict, args: argparse.Namespace) -> str:
    """The figures as the README shows them."""
    lines = [f"Measured on {results['machine']} (`make bench`, median of {args.runs} runs):", "",
             "| request | end to end | reload per request | ratio | encode | LLM | project | decode | raw calls "
             "| overhead |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in results["requests"].items():
        decode = sum(v for k, v in row.items() if k.startswith("decode_"))
        lines.append(f"| {name} | {row['end_to_end_s']:.2f} s | {row['reload_per_request_s']:.2f} s | "
                     f"{row['reload_ratio']:.1f}x | {row.get('encode_s', 0):.3f} | "
                     f"{row.get('llm_s', 0):.2f} | {row.get('project_s', 0):.3f} | {decode:.2f} | "
                     f"{row['raw_components_s']:.2f} s | {row['overhead_pct']:+.1f}% |")
    b, cold, turn = results["batch"], results["cold_start"], results["second_turn"]
    lines += ["", f"- cold start to first text reply (second start): {cold['seconds']:.1f} s, peak RSS "
                  f"{cold['peak_rss_mb']:.0f} MB with no decoder loaded (decoders load lazily)",
              f"- peak RSS with all three decoders loaded: {results['peak_memory_all_decoders']['peak_rss_mb']:.0f} MB",
              f"- a conversation's second turn: {turn['from_scratch_s']:.2f} s from scratch, "
              f"{turn['from_cache_s']:.2f} s from the KV cache of the first",
              f"- {args.jobs} scripted image jobs: {b['batched_jobs_per_min']:.0f} jobs/min batched, "
              f"{b['one_by_one_jobs_per_min']:.0f} one by one ({b['speedup']:.1f}x)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
