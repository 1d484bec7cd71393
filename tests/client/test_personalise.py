"""The personalised model: local-only and global mixed, the mix chosen on the training split only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.benefit import MODEL_FILES, REPORT, benefit_report, benefit_settings
from client.hospital import HospitalData
from client.personalise import load_mixture
from common.config import RunConfig
from common.data import Samples
from common.errors import ConfigError
from common.tasks import get_task, resolve
from common.training import predict_proba

CPU = torch.device("cpu")
TASK = get_task("tabular")
CONFIG = resolve(RunConfig(task="tabular", data_path="", dp=False, lr=0.1, num_server_rounds=5, batch_size=32))


def synthetic(seed: int, n: int) -> Samples:
    """Two classes a linear model separates well: y = [x0 + x1 / 2 + noise > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] / 2 + rng.normal(scale=0.5, size=n) > 0).astype(np.int64)
    return Samples(x, y)


def hospital(test: Samples) -> HospitalData:
    return HospitalData("site", synthetic(0, 160), test, 2, (4,), "f")


def wrong_model() -> torch.nn.Module:
    """A 'global' model that has learnt the opposite of the truth."""
    model = TASK.build_model((4,), 2, CONFIG)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 1.5, 0, 0], [-3.0, -1.5, 0, 0]]))
        model.bias.zero_()
    return model


def report(tmp_path: Path, name: str, data: HospitalData, global_model: torch.nn.Module) -> tuple[dict, Path]:
    settings = benefit_settings({"benefit-report": True, "benefit-dir": str(tmp_path / name)})
    row = benefit_report(TASK, global_model, CONFIG, data, settings, "run", CPU)
    saved = next((tmp_path / name).rglob(REPORT))
    return row, saved.parent


def test_the_mix_is_chosen_on_the_training_split_whatever_the_held_out_split_holds(tmp_path: Path):
    """Same training split, two different held-out splits (one with every label flipped):
    the same mix and the same personalised model; only the scores differ."""
    torch.manual_seed(5)
    global_model = TASK.build_model((4,), 2, CONFIG)
    held_out = synthetic(1, 60)
    flipped = Samples(held_out.x, 1 - held_out.y)
    _, first = report(tmp_path, "a", hospital(held_out), global_model)
    _, second = report(tmp_path, "b", hospital(flipped), global_model)
    chosen = [json.loads((f / REPORT).read_text())["personalised"] for f in (first, second)]
    assert chosen[0]["weight_local"] == chosen[1]["weight_local"]
    assert chosen[0]["training_split_scores"] == chosen[1]["training_split_scores"]
    with np.load(first / MODEL_FILES["personalised"]) as a, np.load(second / MODEL_FILES["personalised"]) as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_global_model_that_is_wrong_here_does_not_cost_the_hospital(tmp_path: Path):
    """The global model predicts the opposite of this hospital's truth: the personalised
    model is the hospital's own (w = 1) and scores as local-only, which fine-tuning did not."""
    row, folder = report(tmp_path, "site", hospital(synthetic(1, 60)), wrong_model())
    assert row["global_accuracy"] < 0.5 < row["local_only_accuracy"]
    assert row["personalised_accuracy"] >= row["local_only_accuracy"] - 0.01
    assert json.loads((folder / REPORT).read_text())["personalised"]["weight_local"] == 1.0


def test_the_saved_personalised_model_loads_and_predicts_the_mix(tmp_path: Path):
    data = hospital(synthetic(1, 60))
    torch.manual_seed(5)
    _, folder = report(tmp_path, "site", data, TASK.build_model((4,), 2, CONFIG))
    weight = json.loads((folder / REPORT).read_text())["personalised"]["weight_local"]
    mixture = load_mixture(TASK.build_model((4,), 2, CONFIG), TASK.build_model((4,), 2, CONFIG),
                           folder / MODEL_FILES["personalised"])
    assert mixture.weight_local == weight
    local, global_model = (TASK.build_model((4,), 2, CONFIG) for _ in range(2))
    for model, name in ((local, "local_only"), (global_model, "global")):
        with np.load(folder / MODEL_FILES[name]) as saved:
            model.load_state_dict({k: torch.from_numpy(saved[k]) for k in saved.files})
    expected = weight * predict_proba(local, data.test.x, CPU) + (1 - weight) * predict_proba(global_model,
                                                                                             data.test.x, CPU)
    assert predict_proba(mixture, data.test.x, CPU) == pytest.approx(expected, abs=1e-6)


def test_the_retired_personalise_epochs_setting_is_refused_by_name():
    with pytest.raises(ConfigError, match="personalise-epochs is no longer used"):
        benefit_settings({"benefit-report": True, "personalise-epochs": 4})


class Untouchable:
    """A held-out split that fails the test when anything reads it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the personalised model read the held-out split ({name})")

    def __len__(self) -> int:
        raise AssertionError("the personalised model read the held-out split (len)")


def test_training_and_choosing_the_personalised_model_never_touches_the_held_out_split():
    from client.benefit import _train_models

    data = HospitalData("site", synthetic(0, 160), Untouchable(), 2, (4,), "f")  # type: ignore[arg-type]
    models, details = _train_models(TASK, wrong_model(), CONFIG, data, CPU)
    assert details["personalised"]["weight_local"] == 1.0
    assert set(models) == {"local_only", "global", "personalised"}
