"""A stage run for test_distributed_training.py, started by torchrun (one copy per process).

    torchrun --nproc_per_node 2 tests/anygpt/_stage_worker.py CONFIG DATA OUT SUMMARY [--kill-after STEP]

`--kill-after STEP` kills the first process (SIGKILL, no clean-up) right after optimizer step STEP
(counted from 0), as a crash or a pre-empted machine would; torchrun then stops the others.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import anygpt.train.stages as stages
from anygpt.config import AnyGPTConfig
from anygpt.train.loop import is_main_process

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("data")
parser.add_argument("out")
parser.add_argument("summary")
parser.add_argument("--kill-after", type=int, default=None)
parser.add_argument("--stage", type=int, default=2)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--limit", type=int, default=8)
args = parser.parse_args()

if args.kill_after is not None:
    loop_train = stages.train

    def train(*a, **k):
        def on_step(step: int) -> None:
            if step == args.kill_after and is_main_process():
                os.kill(os.getpid(), signal.SIGKILL)
        return loop_train(*a, on_step=on_step, **k)

    stages.train = train

summary = stages.train_stage(args.stage, args.data, args.out, config=AnyGPTConfig.load(args.config),
                             steps=args.steps, batch_size=args.batch_size, lr=3e-3, limit=args.limit, seed=0,
                             save_every=2)
if is_main_process():
    with open(args.summary, "w") as f:
        json.dump(summary, f)
