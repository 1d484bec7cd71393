"""Central (hospital-level) DP: Flower's server-side fixed-clipping wrapper, as a run option.

Four heart-disease hospitals, one round, no local DP, in process over the real
ClientApp (tests.inprocess_grid). Training is seeded, so runs that differ only
in the central noise see the same clipped updates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from client.app import app
from common.config import RunConfig
from common.errors import ConfigError
from common.tasks import get_task, load_data
from server.federation import run_federation
from tests.inprocess_grid import InProcessGrid

HOSPITALS = 4


def run(tmp_path: Path, data_dir: Path, noise: float, clip: float, rounds: int = 1) -> tuple[RunConfig, dict, dict]:
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), model="mlp", dp=False, num_server_rounds=rounds,
                       min_hospitals=HOSPITALS, central_dp_noise=noise, central_dp_clip=clip, out_dir=str(tmp_path))
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)]
    run_federation(InProcessGrid(app, nodes), config)
    return config, json.loads((tmp_path / "model_card.json").read_text()), torch.load(tmp_path / "final_model.pt")


def flat(weights: dict) -> np.ndarray:
    return np.concatenate([weights[k].double().numpy().ravel() for k in sorted(weights)])


def test_clipped_noisy_mean_and_its_epsilon(data_dir: Path, tmp_path: Path):
    clip = 0.01
    config, quiet_card, quiet = run(tmp_path / "clip-only", data_dir, noise=1e-9, clip=clip)
    _, noisy_card, noisy = run(tmp_path / "noisy", data_dir, noise=2.0, clip=clip)

    # Clipping: the global model moved by at most the clipping norm (a mean of clipped updates).
    torch.manual_seed(config.seed)
    data = load_data(config)
    initial = get_task(config.task).build_model(data.input_shape, data.num_classes, config).state_dict()
    moved = float(np.linalg.norm(flat(quiet) - flat(initial)))
    assert 0 < moved <= clip * (1 + 1e-4)

    # Noise: replacing one hospital's clipped update moves the unweighted mean of m of them by up to
    # 2 clip / m (its old and its new update may point opposite ways), so what the noisy run adds is
    # Gaussian with sd = noise x 2 clip / m: the noise multiplier the accountant is given, relative to
    # that sensitivity (with sd = noise x clip / m the reported epsilon would be that of noise / 2).
    added = flat(noisy) - flat(quiet)
    expected = 2.0 * 2 * clip / HOSPITALS
    print(f"added noise sd {added.std():.5f}, expected {expected:.5f} over {added.size} weights")
    assert added.std() == pytest.approx(expected, rel=0.15)
    assert abs(added.mean()) < 4 * expected / np.sqrt(added.size)

    # Its epsilon: one Gaussian release without sampling amplification, as an accountant says;
    # reported apart from the (here absent) sample-level DP of the hospitals.
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=2.0, sample_rate=1.0)
    section = noisy_card["central_dp"]
    assert section["releases"] == 1
    assert section["epsilon"] == pytest.approx(accountant.get_epsilon(delta=config.delta), rel=1e-9)
    assert section["sensitivity"] == "2 x clip / m (replace one hospital's update)"
    assert noisy_card["differential_privacy"]["enabled"] is False
    assert not quiet_card["rejected_replies"] and not noisy_card["rejected_replies"]


def test_central_dp_settings_that_cannot_hold_are_refused():
    with pytest.raises(ConfigError, match="central-dp-noise > 0 needs strategy fedavg or fedprox"):
        RunConfig(central_dp_noise=1.0, strategy="fedadam").validate()
    with pytest.raises(ConfigError, match="cannot go with secure-aggregation"):
        RunConfig(central_dp_noise=1.0, secure_aggregation=True).validate()
    with pytest.raises(ConfigError, match="central-dp-noise=-1"):
        RunConfig(central_dp_noise=-1.0).validate()
    with pytest.raises(ConfigError, match="central-dp-clip=0"):
        RunConfig(central_dp_noise=1.0, central_dp_clip=0.0).validate()
