"""The GAN's fidelity score: a Fréchet distance in a real-data classifier's features, with a
real-vs-real reference, reported beside train-on-synthetic / test-on-real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.data import Samples, TaskData, subsample
from common.tasks import load_data, resolve
from common.tasks.image_cnn.model import build_cnn
from common.tasks.image_gan.fidelity import fidelity, frechet_distance
from common.tasks.image_gan.model import build_gan
from common.tasks.image_gan.synthetic import finish_gan
from common.training import fit_classifier

CPU = torch.device("cpu")


def _pneumonia(data_dir: Path) -> TaskData:
    return load_data(resolve(RunConfig(task="image-gan", data_path=str(data_dir / "medmnist" / "pneumoniamnist.npz"))))


def test_distance_of_a_set_to_itself_is_zero_and_a_shift_costs_its_square():
    features = np.random.default_rng(0).normal(size=(400, 16))
    assert frechet_distance(features, features) < 1e-6
    # same covariance, means 3 apart along one axis: the distance is 3^2
    shifted = features + np.eye(16)[0] * 3
    assert abs(frechet_distance(features, shifted) - 9.0) < 1e-6


def test_real_vs_real_is_far_smaller_than_real_vs_noise(data_dir: Path):
    data = _pneumonia(data_dir)
    config = resolve(RunConfig(task="image-cnn", model="cnn", lr=0.01, local_epochs=1, batch_size=64, seed=0))
    cnn = build_cnn(data.input_shape, data.num_classes, config)
    fit_classifier(cnn, subsample(data.train, 600, 0), data.num_classes, config, None, CPU, 0)
    real, reference = subsample(data.validation, 300, 1), subsample(data.test, 300, 1)
    noise = Samples(np.random.default_rng(0).random(real.x.shape, dtype=np.float32), real.y)
    scores = fidelity(cnn, noise, real, reference, CPU)
    assert scores["fd-real"] * 10 < scores["fd"]
    assert scores["fd-ratio"] > 10


def test_the_run_reports_fidelity_beside_tstr(data_dir: Path, tmp_path: Path):
    """What `fedward simulate --task image-gan` puts into the model card's final metrics
    (server/federation.py records what the task's finish returns)."""
    full = _pneumonia(data_dir)
    data = TaskData(subsample(full.train, 400, 0), subsample(full.test, 200, 0), full.num_classes, full.source)
    config = resolve(RunConfig(task="image-gan", seed=0))
    untrained = build_gan(data.input_shape, data.num_classes, config)
    final = finish_gan(untrained, data, config, tmp_path, CPU)
    assert {"tstr-accuracy", "trtr-accuracy", "fd", "fd-real", "fd-ratio"} <= set(final)
    # an untrained generator's blobs are much further from real X-rays than real ones are
    assert final["fd"] > 2 * final["fd-real"] > 0
    assert final["fd-ratio"] == final["fd"] / final["fd-real"]
