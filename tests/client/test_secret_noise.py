"""A hospital's DP noise and batch sampling come from its own OS entropy (issue 16 item 1).

Before, training was seeded with config.seed, the round and a CRC of the hospital's
name, all known to the server: two runs gave the same update, and the server could
regenerate the noise and subtract it. These tests call the ClientApp's train handler
as a SuperNode does (node config with a data path), with the same run config and round.
"""

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from client.app import app
from common.config import RunConfig
from tests.client.test_client_app import initial
from tests.client.test_privacy_ledger import train_message

CONFIG = RunConfig(task="image-cnn", num_server_rounds=1, epsilon=2.0, batch_size=16, lr=0.5)
SHAPE = (1, 28, 28)  # the CNN: 24,034 weights


def tiny_medmnist(path: Path) -> Path:
    """A MedMNIST-format file of 96 random 28x28 images (the CNN does not care what they show)."""
    rng = np.random.default_rng(0)
    arrays = {f"{split}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for split, n in (("train", 96), ("test", 8))}
    arrays |= {f"{split}_labels": rng.integers(0, 2, (n, 1)) for split, n in (("train", 96), ("test", 8))}
    np.savez(path, **arrays)
    return path


def trained(data: Path, ledger: Path, arrays: ArrayRecord, **settings: object) -> np.ndarray:
    node = {"data-path": str(data), "privacy-ledger": str(ledger), **settings}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    reply = app(train_message(arrays, CONFIG, 1, "same-run"), context)
    assert not reply.has_error(), reply.error
    return np.concatenate([a.numpy().ravel().astype(np.float64) for a in reply.content["arrays"].values()])


def test_two_hospitals_runs_from_the_same_config_and_round_draw_uncorrelated_noise(tmp_path: Path):
    data = tiny_medmnist(tmp_path / "images.npz")
    arrays = initial(CONFIG, SHAPE, 2)
    # four trainings from the same model, config and round (separate ledgers: no replay between them)
    weights = [trained(data, tmp_path / f"ledger-{i}.sqlite", arrays) for i in range(4)]
    first, second = weights[0] - weights[1], weights[2] - weights[3]  # what differs: noise and sampling only
    assert first.size >= 6_400  # |corr| < 0.05 is then over 4 standard deviations of independent noise
    assert np.abs(first).max() > 0 and np.abs(second).max() > 0, "the same config and round gave the same update"
    corr = float(np.corrcoef(first, second)[0, 1])
    print(f"correlation of the noise of two pairs of runs: {corr:+.4f} over {first.size} weights")
    assert abs(corr) < 0.05


def test_reproducible_noise_is_a_simulations_choice(tmp_path: Path):
    """A virtual hospital whose simulation asks for it repeats its noise; nothing else does."""
    config = RunConfig(num_server_rounds=1, epsilon=2.0)
    arrays = initial(config, (30,), 2)

    def simulated(i: int, **settings: object) -> list[bytes]:
        node = {"partition-id": 0, "num-partitions": 2, "privacy-ledger": str(tmp_path / f"s-{i}.sqlite"), **settings}
        context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
        reply = app(train_message(arrays, config, 1, "run"), context)
        return [a.numpy().tobytes() for a in reply.content["arrays"].values()]

    assert simulated(0, **{"reproducible-noise": True}) == simulated(1, **{"reproducible-noise": True})
    assert simulated(2) != simulated(3), "a simulated hospital too draws secret noise unless asked"
