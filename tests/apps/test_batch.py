"""Scripted generation: script parsing, resumable runs, batching, failures, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from apps.batch import MANIFEST, ScriptError, load_script, run_script


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def test_defaults_vars_and_templating(tmp_path, media_dir):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    script = _write(tmp_path / "s.yaml", """
defaults: {outputs: [image], seed: 2, options: {num_inference_steps: 3}}
vars: {shape: circle}
jobs:
  - id: red
    prompt: "draw a {{ colour }} {{ shape }}"
    vars: {colour: red}
    inputs: {image: in/a.png}
  - prompt: "play a {{ shape }} of sound"
    outputs: [audio]
    options: {guidance_scale: 2.0}
""")
    red, second = load_script(script)
    assert red.prompt == "draw a red circle" and red.seed == 2 and red.outputs == ["image"]
    assert red.inputs == {"image": [str((tmp_path / "in" / "a.png").resolve())]}
    assert second.id == "job-0001" and second.outputs == ["audio"]
    assert second.options == {"num_inference_steps": 3, "guidance_scale": 2.0}


@pytest.mark.parametrize("text, message", [
    ("jobs: [{id: ../../etc/x, prompt: hi}]", "not a safe folder name"),
    ("jobs: [{id: a, prompt: hi}, {id: a, prompt: ho}]", "used twice"),
    ("jobs: [{prompt: 'draw {{ nope }}'}]", "template error"),
    ("jobs: [{prompt: hi, inputs: {image: missing.png}}]", "file not found"),
    ("jobs: [{prompt: hi, outputs: [smell]}]", "unknown output modality"),
    ("jobs: [{prompt: hi, options: {seed: 3}}]", "on the job itself"),
    ("jobs: [{prompt: hi, colour: red}]", "Extra inputs"),
    ("jobs: {prompt: hi}", "expected a list of jobs"),
    ("jobs: [", "not valid YAML"),
    ("jobs: []", "no jobs"),
])
def test_bad_scripts_get_clear_errors(tmp_path, text, message):
    with pytest.raises(ScriptError, match=message):
        load_script(_write(tmp_path / "s.yaml", text))


def test_jsonl_scripts_and_their_errors_name_the_line(tmp_path):
    jobs = load_script(_write(tmp_path / "s.jsonl", '{"id": "a", "prompt": "hi"}\n\n{"prompt": "ho"}\n'))
    assert [j.id for j in jobs] == ["a", "job-0001"]
    with pytest.raises(ScriptError, match="line 2"):
        load_script(_write(tmp_path / "t.jsonl", '{"prompt": "hi"}\n{"prompt": \n'))


def test_run_writes_files_and_manifest_and_rerun_skips_everything(tiny, tmp_path):
    jobs = load_script(_write(tmp_path / "s.yaml", """
defaults: {options: {num_inference_steps: 2}}
jobs:
  - {id: pic, prompt: draw a red circle, outputs: [image]}
  - {id: both, prompt: play a rising sweep and draw a square, outputs: [audio, image]}
  - {id: words, prompt: "What is the capital of France?", outputs: []}
"""))
    out = tmp_path / "out"
    first = run_script(tiny, jobs, out, progress=False)
    assert first.ok and first.done == ["pic", "both", "words"]
    lines = _manifest(out)
    assert [line["id"] for line in lines] == ["pic", "both", "words"]
    for line in lines:
        for f in line["files"]:
            assert (out / f).is_file()
    assert Image.open(out / "pic" / "image_0.png").size == (64, 64)
    assert sorted(p.name for p in (out / "both").iterdir()) == ["audio_0.wav", "image_0.png", "response.json"]
    assert lines[2]["files"] == ["words/response.json"] and "Paris" in lines[2]["text"]
    mtime = (out / "pic" / "image_0.png").stat().st_mtime_ns
    again = run_script(tiny, jobs, out, progress=False)
    assert again.skipped == 3 and again.done == [] and len(_manifest(out)) == 3
    assert (out / "pic" / "image_0.png").stat().st_mtime_ns == mtime


def test_jobs_wanting_the_same_output_decode_in_one_call(tiny, tmp_path, monkeypatch):
    jobs = load_script(_write(tmp_path / "s.yaml", """
defaults: {outputs: [image], options: {num_inference_steps: 2}}
jobs: [{prompt: draw a red circle}, {prompt: draw a blue square, seed: 5}, {prompt: draw a green triangle}]
"""))
    decoder = tiny.decoder("image")
    calls = []
    real = decoder.decode
    monkeypatch.setattr(decoder, "decode", lambda embeds, **kw: calls.append((len(embeds), kw["seeds"])) or
                        real(embeds, **kw))
    summary = run_script(tiny, jobs, tmp_path / "out", batch_size=8, progress=False)
    assert summary.ok and calls == [(3, [0, 5, 0])]
    calls.clear()
    run_script(tiny, jobs, tmp_path / "one-by-one", batch_size=1, progress=False)
    assert calls == [(1, [0]), (1, [5]), (1, [0])]
    import numpy as np

    same = [np.asarray(Image.open(tmp_path / d / "job-0001" / "image_0.png"), dtype=int) for d in ("out", "one-by-one")]
    assert np.abs(same[0] - same[1]).max() <= 2  # batching does not change a job's result (beyond float rounding)


def test_a_failing_job_is_reported_and_the_others_finish(tiny, tmp_path, media_dir):
    jobs = load_script(_write(tmp_path / "s.yaml", f"""
defaults: {{outputs: [], options: {{max_new_tokens: 4}}}}
jobs:
  - {{id: ok1, prompt: hello}}
  - {{id: bad, prompt: "what is this?", inputs: {{image: {media_dir / 'not_an_image.png'}}}}}
  - {{id: ok2, prompt: hello again}}
"""))
    summary = run_script(tiny, jobs, tmp_path / "out", progress=False)
    assert summary.done == ["ok1", "ok2"] and [f[0] for f in summary.failed] == ["bad"]
    assert "not_an_image.png" in summary.failed[0][1]
    assert not (tmp_path / "out" / "bad").exists()
    fast = run_script(tiny, jobs, tmp_path / "fast", fail_fast=True, batch_size=1, progress=False)
    assert fast.done == ["ok1"] and len(fast.failed) == 1


def _run_cli(script: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "apps.cli", "run", str(script), "--out", str(out),
                             "--batch-size", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_sigkill_mid_run_then_rerun_does_every_job_exactly_once(tmp_path):
    n = 10
    script = _write(tmp_path / "s.jsonl", "".join(
        json.dumps({"id": f"j{i:02d}", "prompt": f"draw shape number {i}", "outputs": ["image"], "seed": i,
                    "options": {"num_inference_steps": 2, "max_new_tokens": 8}}) + "\n" for i in range(n)))
    out = tmp_path / "out"
    proc = _run_cli(script, out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / MANIFEST).is_file() and len((out / MANIFEST).read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_manifest(out))
    assert 3 <= killed_at < n
    rerun = _run_cli(script, out)
    log = rerun.communicate(timeout=600)[0].decode()
    assert rerun.returncode == 0, log[-2000:]
    lines = _manifest(out)
    assert sorted(line["id"] for line in lines) == [f"j{i:02d}" for i in range(n)]  # each exactly once
    assert f"{n - killed_at} done, {killed_at} already done" in log
    for line in lines:
        assert [Path(f).name for f in line["files"]] == ["image_0.png", "response.json"]
        assert Image.open(out / line["files"][0]).size == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [f"j{i:02d}" for i in range(n)])


def test_cli_exit_code_and_failure_list(tmp_path, media_dir):
    script = _write(tmp_path / "s.yaml", f"""
jobs:
  - {{id: bad, prompt: "what is this?", outputs: [], inputs: {{image: {media_dir / 'not_an_image.png'}}}}}
""")
    proc = _run_cli(script, tmp_path / "out")
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 1 and "failed bad" in log and "not_an_image.png" in log
    unsafe = _write(tmp_path / "u.yaml", "jobs: [{id: ../../etc/x, prompt: hi}]")
    proc = _run_cli(unsafe, tmp_path / "out2")
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 2 and "not a safe folder name" in log and not (tmp_path / "out2").exists()


def test_ray_backend_gives_the_same_results_as_a_local_run(tiny, tmp_path):
    import numpy as np

    from apps.batch import run_script_ray

    jobs = load_script(_write(tmp_path / "s.yaml", """
defaults: {options: {num_inference_steps: 2, max_new_tokens: 12}}
jobs:
  - {id: pic, prompt: draw a red circle, outputs: [image], seed: 1}
  - {id: clip, prompt: animate a blue square moving left, outputs: [video], seed: 2}
  - {id: words, prompt: "What is the capital of France?", outputs: []}
"""))
    local = run_script(tiny, jobs, tmp_path / "local", progress=False)
    remote = run_script_ray(jobs, tmp_path / "ray", model_spec={"preset": "tiny"}, workers=1, batch_size=2,
                            progress=False)
    assert local.ok and remote.ok and sorted(remote.done) == sorted(local.done)
    by_id = {d: {line["id"]: line for line in _manifest(tmp_path / d)} for d in ("local", "ray")}
    for job_id, line in by_id["local"].items():
        other = by_id["ray"][job_id]
        assert other["text"] == line["text"] and other["files"] == line["files"] and other["seeds"] == line["seeds"]
    a = np.asarray(Image.open(tmp_path / "local" / "pic" / "image_0.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "ray" / "pic" / "image_0.png"), dtype=int)
    assert np.abs(a - b).max() <= 2  # the same picture (a worker's thread count may change the last bit)
    again = run_script_ray(jobs, tmp_path / "ray", model_spec={"preset": "tiny"}, progress=False)
    assert again.skipped == 3 and len(_manifest(tmp_path / "ray")) == 3
