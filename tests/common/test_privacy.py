import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from common.config import RunConfig
from common.data import Samples
from common.errors import ConfigError
from common.privacy import DPState, calibrate_noise, epsilon_spent
from common.serialization import to_arrays
from common.tasks import get_task
from common.training import batches_per_epoch, fit_classifier, planned_steps


def test_calibrated_noise_spends_the_target_over_the_planned_steps():
    noise = calibrate_noise(epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=300)
    spent = epsilon_spent([(noise, 0.05, 300)], 1e-5)
    assert 1.98 <= spent <= 2.0


def test_impossible_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="epsilon=0"):
        calibrate_noise(epsilon=0.0, delta=1e-5, sample_rate=0.1, steps=10)


def test_rounds_of_local_training_accumulate_like_one_accountant():
    """Three rounds, each a fresh model and optimiser as in the ClientApp."""
    rng = np.random.default_rng(0)
    data = Samples(rng.normal(size=(120, 5)).astype(np.float32), (rng.random(120) > 0.5).astype(np.int64))
    config = RunConfig(num_server_rounds=3, batch_size=16, lr=0.1, epsilon=2.0)
    q = 1 / batches_per_epoch(len(data), config.batch_size)
    state = DPState(calibrate_noise(2.0, 1e-5, q, planned_steps(len(data), config)), 1.0, 1e-5)
    after_round = []
    for r in range(3):
        model = get_task("tabular").build_model((5,), 2, config)
        fit_classifier(model, data, 2, config, state, torch.device("cpu"), round_seed=r)
        after_round.append(state.epsilon)
    steps = sum(s for _, _, s in state.history)
    reference = RDPAccountant()
    reference.history = [(state.noise_multiplier, q, steps)]
    assert after_round[-1] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-6)
    assert after_round[0] < after_round[1] < after_round[2] <= 2.0 + 1e-2
    assert steps == planned_steps(len(data), config)


def test_weights_leave_without_the_opacus_prefix():
    rng = np.random.default_rng(1)
    data = Samples(rng.normal(size=(40, 1, 28, 28)).astype(np.float32), (np.arange(40) % 2).astype(np.int64))
    config = RunConfig(task="image-cnn", batch_size=8, lr=0.1)
    model = get_task("image-cnn").build_model((1, 28, 28), 2, config)
    keys = set(model.state_dict())
    fit_classifier(model, data, 2, config, DPState(1.0, 1.0, 1e-5), torch.device("cpu"), 0)
    arrays = to_arrays(model)
    assert set(arrays.keys()) == keys and not any("_module" in k for k in arrays.keys())


@pytest.mark.parametrize("history", [
    [(1.1, 0.068, 15)],
    [(1.1, 0.068, 15), (1.1, 0.068, 15), (1.1, 0.068, 15)],  # rounds of one run: merged
    [(0.8, 0.02, 100), (2.5, 0.25, 4), (0.8, 0.02, 50)],  # runs with other settings on one dataset
])
def test_epsilon_is_the_one_opacus_accountant_gives(history):
    """epsilon_spent caches the RDP of one step; the result must stay Opacus's own, bit for bit
    up to the merge of equal entries, and must not change when asked again (cache hit)."""
    reference = RDPAccountant()
    reference.history = list(history)
    expected = reference.get_epsilon(1e-5)
    assert epsilon_spent(history, 1e-5) == pytest.approx(expected, rel=1e-12)
    assert epsilon_spent(history, 1e-5) == epsilon_spent(list(history), 1e-5)
    assert epsilon_spent(history, 1e-6) > epsilon_spent(history, 1e-5)
