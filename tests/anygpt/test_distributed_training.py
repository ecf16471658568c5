"""Training on two processes (torchrun, gloo on the CPU) against one, on a tiny backbone built in code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anygpt import AnyGPT
from anygpt.data import toyworld
from anygpt.model import Turn
from anygpt.train.loop import mean_over_processes, shard
from anygpt.train.stages import train_stage

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_stage_worker.py")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return toyworld.make_dataset(d, n_per_modality={"image": 4, "audio": 4}, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)


def _curve(run: Path) -> list[float]:
    """The loss of each step from the run's log (a step logged twice, before a kill and after the
    resume, counts with its last line)."""
    steps = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        steps[entry["step"]] = entry["loss"]
    return [steps[k] for k in sorted(steps)]


def test_two_processes_give_the_loss_curve_of_one_and_resume_after_a_kill(tiny_backbone_config, manifest, tmp_path):
    config = tmp_path / "config.json"
    tiny_backbone_config.save(config)
    kwargs = dict(steps=4, batch_size=4, lr=3e-3, limit=8, seed=0, save_every=2)
    one = train_stage(2, manifest, tmp_path / "one", config=tiny_backbone_config, **kwargs)
    assert one["processes"] == 1 and len(one["losses"]) == 4

    two = tmp_path / "two"
    killed = _torchrun(config, manifest, two, tmp_path / "killed.json", "--kill-after", 2)
    assert killed.returncode != 0 and not (tmp_path / "killed.json").exists(), killed.stderr[-3000:]
    assert json.loads((two / "checkpoint" / "state.json").read_text()) == {"step": 2, "processes": 2}
    assert not (two / "model").exists()

    resumed = _torchrun(config, manifest, two, tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "resumed.json").read_text())
    assert summary["processes"] == 2 and summary["resumed_from"] == 2 and summary["steps"] == 4
    assert summary["distributed"] == "MULTI_CPU"

    assert _curve(two) == pytest.approx(_curve(tmp_path / "one"), rel=1e-4, abs=1e-5)
    assert summary["losses"] == pytest.approx(one["losses"][2:], rel=1e-4, abs=1e-5)
    # the models both runs saved answer alike (compared by what they compute: Adam turns rounding into
    # steps of the learning rate where a gradient is ~0, e.g. an attention's key bias, which changes nothing)
    outs = []
    for run in (tmp_path / "one", two):
        model = AnyGPT.from_pretrained(run / "model").model
        conversation = [Turn("user", "play a low hum"), Turn("assistant", model.signal_string("audio"))]
        with torch.no_grad():
            outs.append(model([conversation]))
    assert outs[0].loss.item() == pytest.approx(outs[1].loss.item(), rel=1e-4)
    assert torch.allclose(outs[0].conditionings[0][0], outs[1].conditionings[0][0], atol=1e-4)


def test_each_process_takes_its_slice_of_the_global_batch():
    batch = {"x": torch.arange(10).reshape(5, 2), "items": list("abcde"), "pair": (torch.arange(5), 7), "n": 3}
    parts = [shard(batch, i, 2) for i in range(2)]
    assert [p["items"] for p in parts] == [["a", "b"], ["c", "d", "e"]]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert [p["pair"][1] for p in parts] == [7, 7] and [p["n"] for p in parts] == [3, 3]
    assert shard(batch, 0, 1) is batch
    with pytest.raises(ValueError, match="at least as large"):
        shard([1], 1, 2)
    assert mean_over_processes(torch.tensor(6.0), 4).item() == 1.5  # alone: a plain mean
