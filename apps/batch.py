"""Scripted content generation: `anygpt run SCRIPT --out DIR`.

A script is YAML or JSONL: a list of jobs (prompt, input files, wanted outputs, seed, options),
with `defaults` merged into every job and `vars` filled into its strings (Jinja2, strict: an
unknown variable is an error). YAML:

    defaults: {outputs: [image], options: {num_inference_steps: 20}}
    vars: {style: "a simple graphic of"}
    jobs:
      - id: red-circle
        prompt: "draw {{ style }} a {{ colour }} circle"
        vars: {colour: red}
        seed: 3
      - prompt: "describe this clip"          # id defaults to job-0001
        inputs: {video: [clips/a.mp4]}        # paths relative to the script
        outputs: []

JSONL: one job a line, the same fields (no defaults or vars).

The output folder gets one subfolder per job (its media and response.json) and `manifest.jsonl`,
one line per finished job. A job's folder is written under a temporary name and renamed when
complete, and its manifest line is appended (and fsync'd) only after that, so a crash or Ctrl-C
loses at most the jobs in flight: re-running the same command skips every job the manifest
lists and redoes the rest. Jobs that want the same output are decoded together, in one
pipeline call per batch (`--batch-size`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anygpt.config import INPUT_MODALITIES, OUTPUT_MODALITIES
from anygpt.errors import AnyGPTError, InputError

MANIFEST = "manifest.jsonl"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ScriptError(InputError):
    """A script that cannot be read or run: the message names the file, the job and the problem."""


def _known(value, known: tuple[str, ...], kind: str):
    unknown = set(value) - set(known)
    if unknown:
        raise ValueError(f"unknown {kind} modality {sorted(unknown)}; known: {list(known)}")
    return value


class Job(BaseModel):
    """One job of a script, after defaults and templating."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str
    inputs: dict[str, list[str]] = Field(default_factory=dict)  # modality -> files
    outputs: list[str] = Field(default_factory=lambda: list(OUTPUT_MODALITIES))
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)  # ChatOptions fields (steps, sizes, ...)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"job id {value!r} is not a safe folder name (letters, digits, '.', '_', '-'; "
                             "starting with a letter or digit; at most 100 characters)")
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return _known(value, INPUT_MODALITIES, "input")

    @field_validator("outputs")
    @classmethod
    def _known_outputs(cls, value: list[str]) -> list[str]:
        return _known(value, OUTPUT_MODALITIES, "output")

    @field_validator("options")
    @classmethod
    def _no_reserved(cls, value: dict) -> dict:
        reserved = {"outputs", "force", "seed"} & set(value)
        if reserved:
            raise ValueError(f"set {sorted(reserved)} on the job itself, not in options")
        return value


# -- reading scripts -------------------------------------------------------------------------------

def _render(value: Any, variables: dict[str, Any], env) -> Any:
    if isinstance(value, str):
        return env.from_string(value).render(**variables) if "{" in value else value
    if isinstance(value, list):
        return [_render(v, variables, env) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, variables, env) for k, v in value.items()}
    return value


def load_script(path: str | os.PathLike) -> list[Job]:
    """Read, template and validate a YAML or JSONL script; input paths become absolute."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"script not found: {path}")
    text = path.read_text(errors="replace")
    defaults: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    if path.suffix.lower() == ".jsonl":
        raw_jobs = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw_jobs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ScriptError(f"{path} line {number}: not JSON ({e.msg})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ScriptError(f"{path}: not valid YAML: {e}") from None
        if isinstance(data, list):
            data = {"jobs": data}
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise ScriptError(f"{path}: expected a list of jobs, or a mapping with `jobs` (and `defaults`, `vars`)")
        unknown = set(data) - {"jobs", "defaults", "vars"}
        if unknown:
            raise ScriptError(f"{path}: unknown top-level keys {sorted(unknown)} (use jobs, defaults, vars)")
        defaults, variables, raw_jobs = data.get("defaults") or {}, data.get("vars") or {}, data["jobs"]
        if not isinstance(defaults, dict) or not isinstance(variables, dict):
            raise ScriptError(f"{path}: `defaults` and `vars` are mappings")
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    jobs, seen = [], set()
    for index, raw in enumerate(raw_jobs):
        where = f"{path} job {index + 1}"
        if not isinstance(raw, dict):
            raise ScriptError(f"{where}: a job is a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        for key, value in (("vars", raw.get("vars")), ("options", raw.get("options")),
                           ("defaults.options", defaults.get("options"))):
            if value is not None and not isinstance(value, dict):
                raise ScriptError(f"{where}: `{key}` is a mapping, got {type(value).__name__}")
        job_vars = {**variables, **(raw.pop("vars", None) or {})}
        merged = {**defaults, **raw}
        merged["options"] = {**(defaults.get("options") or {}), **(raw.get("options") or {})}
        merged.setdefault("id", f"job-{index:04d}")
        try:
            merged = _render(merged, job_vars, env)
            job = Job.model_validate(merged)
        except TemplateError as e:
            raise ScriptError(f"{where}: template error: {e}") from None
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'job'}: {err['msg']}" for err in e.errors())
            raise ScriptError(f"{where} ({merged.get('id')!r}): {problems}") from None
        if job.id in seen:
            raise ScriptError(f"{where}: job id {job.id!r} is used twice")
        seen.add(job.id)
        job.inputs = {m: [str((path.parent / p).resolve()) for p in files] for m, files in job.inputs.items()}
        for m, files in job.inputs.items():
            for f in files:
                if not Path(f).is_file():
                    raise ScriptError(f"{where} ({job.id!r}): {m} file not found: {f}")
        jobs.append(job)
    if not jobs:
        raise ScriptError(f"{path}: no jobs")
    return jobs


# -- running ---------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    total: int
    skipped: int  # finished by an earlier run
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, error)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def finished_ids(out: Path) -> set[str]:
    """The ids the manifest lists. A torn last line (a crash while appending) is cut off."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return set()
    data = manifest.read_bytes()
    keep = data[:data.rfind(b"\n") + 1]
    if keep != data:
        with open(manifest, "r+b") as f:
            f.truncate(len(keep))
    ids = set()
    for line in keep.decode().splitlines():
        if line.strip():
            ids.add(json.loads(line)["id"])
    return ids


def _tidy(out: Path, jobs: list[Job], done: set[str]) -> None:
    """Remove what a crash left behind: our temporary folders, and folders of this script's jobs that
    the manifest does not list (renamed, but killed before the manifest line). Nothing else."""
    ids = {j.id for j in jobs}
    for child in out.iterdir():
        if not child.is_dir():
            continue
        if child.name.startswith(".tmp-") and child.name[5:].rsplit("-", 1)[0] in ids:
            shutil.rmtree(child)
        elif child.name in ids and child.name not in done:
            shutil.rmtree(child)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _request(job: Job):
    from anygpt.pipeline import ChatRequest

    media = [(m, f) for m, files in job.inputs.items() for f in files]
    options = {**job.options, "outputs": tuple(job.outputs), "force": tuple(job.outputs), "seed": job.seed}
    return ChatRequest(job.prompt, media=media, options=options)


def _finish(out: Path, job: Job, response) -> None:
    """Write a job's files under a temporary name, rename, then append its manifest line."""
    _append(out, _write_job(out, job, response))


def _append(out: Path, line: dict) -> None:
    with open(out / MANIFEST, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_job(out: Path, job: Job, response) -> dict:
    """The job's folder, complete or not at all (temporary name, then rename); returns its manifest line."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{job.id}-", dir=out))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the results are for everyone the umask allows
    files = response.save(tmp)
    final = out / job.id
    os.replace(tmp, final)
    line = {"id": job.id, "prompt": job.prompt, "inputs": job.inputs, "outputs": job.outputs, "text": response.text,
            "files": [f"{job.id}/{f.name}" for f in files],
            "seeds": [run["seed"] for run in response.trace.signal_runs],
            "timings": response.trace.timings, "model_ids": response.trace.model_ids}
    return line


def run_script(model, jobs: list[Job], out: str | os.PathLike, *, fail_fast: bool = False, batch_size: int = 8,
               progress: bool = True) -> RunSummary:
    """Run every job not yet in out/manifest.jsonl; returns what happened (never raises for one job)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out)
    _tidy(out, jobs, done)
    todo = [j for j in jobs if j.id not in done]
    summary = RunSummary(total=len(jobs), skipped=len(jobs) - len(todo))
    t0 = time.perf_counter()
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=console, disable=not progress) as bar:
        task = bar.add_task("jobs", total=len(jobs), completed=summary.skipped, info="")
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start:start + max(1, batch_size)]
            for job, result in _run_batch(model, batch):
                if isinstance(result, Exception):
                    summary.failed.append((job.id, str(result)))
                    bar.update(task, info=f"[red]{job.id} failed")
                    if fail_fast:
                        summary.seconds = time.perf_counter() - t0
                        return summary
                else:
                    _finish(out, job, result)
                    summary.done.append(job.id)
                    bar.update(task, info=job.id)
                bar.advance(task)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_batch(model, batch: list[Job]):
    """(job, response or error) for each job; the batch decodes together, and a failure in it falls
    back to one job at a time so that one bad job does not fail the others."""
    try:
        return list(zip(batch, model.chat_batch([_request(j) for j in batch])))
    except AnyGPTError as e:
        if len(batch) == 1:
            return [(batch[0], e)]
    results = []
    for job in batch:
        try:
            results.append((job, model.chat_batch([_request(job)])[0]))
        except AnyGPTError as e:
            results.append((job, e))
    return results


# -- Ray: the same script across a cluster ---------------------------------------------------------

class _Worker:
    """One Ray actor: loads the model once, then runs batches of jobs, writing their folders into the
    shared output folder and handing the manifest lines back to the driver (the manifest's one writer)."""

    def __init__(self, model_spec: dict, out: str):
        from anygpt.pipeline import AnyGPT

        self.model, self.out = AnyGPT.load(**model_spec), Path(out)

    def run(self, batch: list[dict]) -> list[tuple[str, dict | str]]:
        jobs = [Job.model_validate(j) for j in batch]
        results = []
        for job, result in _run_batch(self.model, jobs):
            results.append((job.id, str(result) if isinstance(result, Exception) else _write_job(self.out, job, result)))
        return results


def run_script_ray(jobs: list[Job], out: str | os.PathLike, *, model_spec: dict, address: str | None = None,
                   workers: int = 1, fail_fast: bool = False, batch_size: int = 8, progress: bool = True) -> RunSummary:
    """`run_script` as Ray tasks: `workers` actors (each loads the model once, `AnyGPT.load(**model_spec)`)
    on the cluster at `address` (None: a local Ray instance), all writing into `out`, which must be a
    folder every node sees. The driver keeps the manifest, so resuming works exactly as in a local run."""
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out)
    _tidy(out, jobs, done)
    todo = [j for j in jobs if j.id not in done]
    summary = RunSummary(total=len(jobs), skipped=len(jobs) - len(todo))
    if not todo:
        return summary
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(1, workers)}))
    try:
        actor = ray.remote(num_cpus=1)(_Worker)
        pool = [actor.remote(model_spec, str(out)) for _ in range(max(1, workers))]
        batches = [todo[i:i + max(1, batch_size)] for i in range(0, len(todo), max(1, batch_size))]
        pending = {pool[i % len(pool)].run.remote([j.model_dump() for j in b]): b for i, b in enumerate(batches)}
        console = Console(stderr=True)
        with Progress(TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[info]}"), console=console, disable=not progress) as bar:
            task = bar.add_task("jobs", total=len(jobs), completed=summary.skipped, info="")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                pending.pop(ready[0])
                for job_id, result in ray.get(ready[0]):
                    if isinstance(result, str):
                        summary.failed.append((job_id, result))
                    else:
                        _append(out, result)
                        summary.done.append(job_id)
                    bar.advance(task)
                if fail_fast and summary.failed:
                    for ref in pending:
                        ray.cancel(ref)
                    break
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary
