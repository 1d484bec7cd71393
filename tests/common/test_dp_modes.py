"""The per-sample gradients each task trains with under DP are the true ones.

image-cnn and sequence-rnn use torch's expanded weights ("ew") instead of Opacus's
hooks because they are faster (benchmarks/dp_step.py); DP is only as good as these
gradients, so each is checked against gradients computed one sample at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.grad_sample import get_gsm_class
from torch import nn

from common.config import RunConfig
from common.data import Samples
from common.privacy import DPState
from common.tasks import get_task

CASES = {  # task, model, one input's shape, classes
    "cnn": ("image-cnn", "", (1, 28, 28), 2),
    "lstm": ("sequence-rnn", "lstm", (40, 1), 5),
    "gru": ("sequence-rnn", "gru", (40, 1), 5),
}


def mode_of(task_name: str) -> str:
    train = get_task(task_name).train
    return getattr(train, "keywords", {}).get("grad_sample_mode", "hooks")


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_sample_gradients_match_one_sample_at_a_time(case: str):
    task_name, model_name, shape, classes = CASES[case]
    task = get_task(task_name)
    assert mode_of(task_name) == "ew"
    torch.manual_seed(0)
    x, y = torch.rand(6, *shape), torch.randint(0, classes, (6,))
    reference = task.build_model(shape, classes, RunConfig(task=task_name, model=model_name))
    expected = []
    for i in range(len(y)):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        expected.append({n: p.grad.clone() for n, p in reference.named_parameters()})
    model = task.build_model(shape, classes, RunConfig(task=task_name, model=model_name))
    model.load_state_dict(reference.state_dict())
    wrapped = get_gsm_class(mode_of(task_name))(model, batch_first=True, loss_reduction="sum")
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    for name, param in model.named_parameters():
        for i in range(len(y)):
            assert torch.allclose(param.grad_sample[i], expected[i][name], atol=1e-5), (name, i)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dp_training_in_the_tasks_mode_runs_on_poisson_batches(case: str):
    """Poisson batches vary in size (1, 2, ... or empty): training goes through and
    the weights stay finite."""
    task_name, model_name, shape, classes = CASES[case]
    task = get_task(task_name)
    config = RunConfig(task=task_name, model=model_name, lr=0.1, batch_size=4, local_epochs=2)
    rng = np.random.default_rng(1)
    samples = Samples(rng.random((9, *shape), dtype=np.float32), np.arange(9, dtype=np.int64) % classes)
    model = task.build_model(shape, classes, config)
    dp = DPState(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    outcome = task.train(model, samples, classes, config, dp, torch.device("cpu"), 3)
    assert outcome.steps > 0 and math.isfinite(outcome.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert dp.history and dp.history[-1][0] == 1.0, "the accountant recorded the noisy steps"
