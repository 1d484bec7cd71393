"""Run the ClientApp's code paths once, on synthetic data, before ClientApps are forked.

Importing the ClientApp is not all a handler needs: the first optimiser makes
torch import `torch._dynamo` & co. (about 200 modules, ~1 s), Opacus and the
task folders load more on first use. A ClientApp forked from a process that only
imported them pays that on every message. `warm_up` trains one DP step of the
tabular model on 16 synthetic rows, evaluates it, computes an epsilon and imports
every task. It runs on one CPU thread: torch's OpenMP worker threads, once started,
make a forked child hang at its first parallel operation (measured: every child
hung), and a CUDA context does not survive fork either.
"""

from __future__ import annotations

import numpy as np
import torch

from common.config import TASK_NAMES, RunConfig
from common.data import Samples
from common.privacy import DPState, epsilon_spent
from common.tasks import get_task, resolve


def warm_up() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_once()
    finally:
        torch.set_num_threads(threads)


def _run_once() -> None:
    for name in TASK_NAMES:
        get_task(name)
    config = resolve(RunConfig(task="tabular"))
    task = get_task("tabular")
    rows = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    samples = Samples(rows, np.arange(16, dtype=np.int64) % 2)
    model = task.build_model(samples.x.shape[1:], 2, config)
    cpu = torch.device("cpu")
    task.train(model, samples, 2, config, DPState(1.0, 1.0, 1e-5), cpu, 0)
    task.evaluate(model, samples, cpu)
    epsilon_spent([(1.0, 0.5, 1)], 1e-5)
