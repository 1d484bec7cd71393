"""The default image model (scattering features + a trained head) under DP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data import Samples
from common.privacy import DPState, calibrate_noise
from common.tasks import get_task, resolve
from common.tasks.image_cnn.dataset import load_medmnist
from common.training import dp_plan
from tests.per_sample_check import assert_per_sample_gradients_are_each_samples_own


@pytest.mark.parametrize(("model_name", "shape"), [("", (1, 28, 28)), ("", (3, 28, 28)), ("scatter-cnn", (1, 28, 28))])
def test_per_sample_gradients_of_the_image_models_are_each_images_own(model_name: str, shape: tuple[int, ...]):
    torch.manual_seed(0)
    model = get_task("image-cnn").build_model(shape, 3, RunConfig(task="image-cnn", model=model_name))
    x, y = torch.rand(5, *shape), torch.randint(0, 3, (5,))
    assert_per_sample_gradients_are_each_samples_own(model, x, y)


def test_what_a_hospital_sends_is_trained_weights_only():
    """The scattering filters are fixed and public: they are no part of the model's state dict,
    so a round's update holds the head's weights and nothing the server could not build itself."""
    model = get_task("image-cnn").build_model((1, 28, 28), 2, RunConfig(task="image-cnn"))
    state = model.state_dict()
    assert state and all(k.startswith("head.") for k in state), sorted(state)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters())


def test_the_default_image_model_beats_the_majority_class_under_dp(data_dir):
    """Small-data regression (seconds): 600 PneumoniaMNIST training images at one hospital, its
    run's default settings, DP-SGD at epsilon 8 (delta 1e-5) over the task's default rounds; scored on 300
    images of the official validation split."""
    path = data_dir / "medmnist" / "pneumoniamnist.npz"
    if not path.exists():
        pytest.skip(f"{path} absent")
    data = load_medmnist(path)
    rng = np.random.default_rng(0)
    train = data.train.take(rng.choice(len(data.train), 600, replace=False))
    val = data.validation.take(rng.choice(len(data.validation), 300, replace=False))
    config = resolve(RunConfig(task="image-cnn", data_path=str(path), epsilon=8.0))
    plan = dp_plan(train, config)
    noise = calibrate_noise(8.0, 1e-5, plan.sample_rate, plan.planned_steps)
    task = get_task("image-cnn")
    torch.manual_seed(0)
    model = task.build_model(data.input_shape, data.num_classes, config)
    dp = DPState(noise, config.max_grad_norm, 1e-5)
    for server_round in range(config.num_server_rounds):
        task.train(model, train, data.num_classes, config, dp, torch.device("cpu"), server_round)
    assert dp.epsilon <= 8.0 + 0.05
    scores = task.evaluate(model, val, torch.device("cpu"))
    assert scores["accuracy"] > scores["majority-baseline"] + 0.1, scores
    assert scores["balanced-accuracy"] > 0.75 and scores["auroc"] > 0.85, scores
