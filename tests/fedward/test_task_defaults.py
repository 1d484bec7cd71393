"""Defaults are what most users run: each task brings its own rounds, batch size, clip and lr.

`fedward simulate --task image-cnn --data X.npz --epsilon 8` with no tuning flag runs the
image recipe chosen on validation splits (benchmarks/medmnist_image_search.py); a tabular
run keeps its old defaults; an explicit flag wins; `flwr run` (pyproject's run config)
resolves the same way; the epsilon a hospital reports is the accountant's for the
resolved steps and sample rate.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from common.config import RunConfig
from common.errors import ConfigError
from common.tasks import get_task, resolve
from common.training import batches_per_epoch
from fedward.cli import build_parser, config_from_args
from tests.conftest import PROJECT_ROOT, assert_run_directory, read_metrics

SETTINGS = ("num_server_rounds", "batch_size", "max_grad_norm", "lr")


def cli_config(*flags: str) -> RunConfig:
    args = build_parser().parse_args(["simulate", *flags, "--out", "/tmp/fedward-never-written"])
    return resolve(config_from_args(args))


def settings(config: RunConfig) -> tuple:
    return tuple(getattr(config, name) for name in SETTINGS)


def test_image_cnn_without_tuning_flags_runs_the_image_recipe(data_dir: Path):
    config = cli_config("--task", "image-cnn", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                        "--hospitals", "5", "--partition", "dirichlet:0.5", "--epsilon", "8")
    assert settings(config) == (20, 128, 0.1, 4.0)
    assert config.lr_schedule == "cosine", "under DP image-cnn's lr falls over the rounds"


def test_image_gan_without_tuning_flags_trains_the_rounds_chosen_on_validation(data_dir: Path):
    """3 rounds (the old default) gave synthetic images that taught a classifier nothing (train-on-synthetic
    accuracy = the majority share); 20 won on the validation split (docs/benchmarks.md)."""
    config = cli_config("--task", "image-gan", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                        "--hospitals", "5", "--epsilon", "10")
    assert config.num_server_rounds == 20 and config.lr == 2e-4
    assert cli_config("--task", "image-gan", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                      "--rounds", "2").num_server_rounds == 2, "an explicit flag wins"


def test_image_cnn_without_dp_runs_its_no_dp_recipe(data_dir: Path):
    """Without DP the scatter head trains at lr 0.003 with no class weights, and the server adds
    momentum 0.7 to FedAvg (BloodMNIST validation: FedAvg 0.849 against 0.797 at the previous lr 0.001
    with class weights; docs/benchmarks.md, "image-cnn without DP: the default FedAvgM recipe"); under
    DP the recipe is unchanged, plain FedAvg."""
    data = str(data_dir / "medmnist" / "bloodmnist.npz")
    no_dp = cli_config("--task", "image-cnn", "--data", data, "--hospitals", "5", "--partition", "dirichlet:0.5",
                       "--no-dp")
    assert not no_dp.dp and settings(no_dp) == (10, 32, 0.1, 0.003)
    assert (no_dp.class_weighting, no_dp.server_momentum, no_dp.lr_schedule) == ("false", 0.7, "constant")
    dp = cli_config("--task", "image-cnn", "--data", data, "--epsilon", "8")
    assert settings(dp) == (20, 128, 0.1, 4.0) and dp.server_momentum == 0.0
    flags = cli_config("--task", "image-cnn", "--data", data, "--no-dp", "--class-weighting", "true",
                       "--server-momentum", "0")
    assert (flags.class_weighting, flags.server_momentum) == ("true", 0.0)
    assert cli_config("--task", "image-cnn", "--data", data, "--lr-schedule", "constant").lr_schedule == "constant"
    assert cli_config("--task", "image-cnn", "--data", data, "--no-dp", "--lr-schedule", "cosine").lr_schedule == "cosine"


@pytest.mark.parametrize(("task", "model"), [("image-cnn", "scatter"), ("sequence-rnn", "cnn-lstm"),
                                             ("tabular", "logreg")])
def test_the_default_model_is_named_in_the_resolved_config(task: str, model: str):
    assert resolve(RunConfig(task=task)).model == model
    assert resolve(RunConfig(task=task, model="gru" if task == "sequence-rnn" else "mlp")).model != model


def test_tabular_keeps_its_old_defaults():
    assert settings(cli_config()) == (3, 32, 1.0, 0.1)
    assert settings(cli_config("--no-dp")) == (3, 32, 1.0, 0.1)
    assert cli_config().lr_schedule == cli_config("--no-dp").lr_schedule == "constant"
    assert resolve(RunConfig(task="sequence-rnn")).lr_schedule == "constant"


def test_an_explicit_flag_wins_over_the_task_default(data_dir: Path):
    config = cli_config("--task", "image-cnn", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                        "--rounds", "4", "--batch-size", "64", "--max-grad-norm", "0.5", "--lr", "2")
    assert settings(config) == (4, 64, 0.5, 2.0)


def test_flwr_run_config_resolves_to_the_task_defaults():
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    image = resolve(RunConfig.from_mapping({**declared, "task": "image-cnn"}))
    assert settings(image) == (20, 128, 0.1, 4.0) and image.lr_schedule == "cosine"
    assert settings(resolve(RunConfig.from_mapping(declared))) == (3, 32, 1.0, 0.1)
    assert settings(resolve(RunConfig.from_mapping({**declared, "task": "image-cnn", "batch-size": 16}))) == (
        20, 16, 0.1, 4.0)


def test_simulate_can_turn_the_balanced_decision_off():
    assert cli_config().balanced_decision and not cli_config("--no-balanced-decision").balanced_decision


def test_a_negative_setting_is_still_refused_with_its_key_named():
    with pytest.raises(ConfigError, match="batch-size=-1"):
        RunConfig.from_mapping({"batch-size": -1})
    with pytest.raises(ConfigError, match="lr-schedule='linear' must be auto"):
        RunConfig.from_mapping({"lr-schedule": "linear"})


def prior_release(card: dict) -> list[tuple[float, float, int]]:
    """The class-histogram release a balanced-decision run also charges (common/class_prior.py)."""
    if not card["config"].get("balanced-decision"):
        return []
    from common.class_prior import histogram_entry

    return [histogram_entry()]


@pytest.mark.slow
def test_image_cnn_run_uses_and_accounts_the_image_defaults(data_dir: Path, tmp_path: Path):
    """No tuning flag but --rounds 3 (the 20 default rounds cost minutes here; the CLI tests above
    resolve them from the same parser): batch, clip, lr, model and the accountant's epsilon; the
    central test scores, the two-class decision cut chosen on MedMNIST's validation split, and a
    final model that loads strictly."""
    from tests.fedward.test_simulate import simulate

    out = tmp_path / "run"
    result = simulate("--task", "image-cnn", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
                      "--hospitals", "2", "--max-samples", "600", "--epsilon", "8", "--rounds", "3", "--out", str(out))
    assert "3 rounds" in result.stdout and "batch 128, clip 0.1, lr 4 falling on a cosine" in result.stdout, \
        result.stdout[-2000:]
    card = assert_run_directory(out, rounds=3)
    assert card["rounds"] == 3 and card["differential_privacy"]["max_grad_norm"] == 0.1
    assert (card["config"]["batch-size"], card["config"]["lr"], card["config"]["lr-schedule"]) == (128, 4.0, "cosine")
    assert card["config"]["model"] == "scatter", "the card names the model that trained (it read '')"
    central = card["final_metrics"]["central_evaluation"]
    assert central["num_examples"] == 600 and 0 <= central["auroc"] <= 1
    point = card["final_metrics"]["operating_point"]  # MedMNIST has a validation split: a cut chosen on it
    assert 0 < point["cut"] <= 1 and set(point["test"]) >= {"accuracy", "sensitivity", "specificity"}
    assert point["validation"]["balanced_accuracy"] >= 0.5, "Youden's cut is at least chance on its own split"
    spec = card["model"]  # what a user loads the final model with
    assert (spec["architecture"], spec["input_shape"], spec["num_classes"]) == ("scatter", [1, 28, 28], 2), spec
    model = get_task("image-cnn").build_model(tuple(spec["input_shape"]), spec["num_classes"],
                                              RunConfig.from_mapping(card["config"]))
    model.load_state_dict(torch.load(out / "final_model.pt"))  # strict: no `_module.` keys
    assert sum(w.numel() for w in model.state_dict().values()) == spec["weights"]
    saved = json.loads((out / "run.json").read_text())["config"]
    assert (saved["num-server-rounds"], saved["batch-size"], saved["max-grad-norm"]) == (3, 128, 0.1)
    rows = [r for r in read_metrics(out) if r["split"] == "train" and r["hospital"] != "all"]
    for hospital in {r["hospital"] for r in rows}:
        mine = sorted((r for r in rows if r["hospital"] == hospital), key=lambda r: r["round"])
        assert len(mine) == 3
        assert [r["lr"] for r in mine] == pytest.approx([4.0, 3.0, 1.0]), "metrics.jsonl shows the cosine's lr"
        reference = RDPAccountant()
        q = 1 / batches_per_epoch(mine[0]["num_examples"], 128)
        reference.history = [(mine[0]["noise_multiplier"], q, sum(r["steps"] for r in mine)), *prior_release(card)]
        assert mine[-1]["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-6)
        assert mine[-1]["epsilon"] <= 8.0 + 1e-2


def test_min_local_steps_is_the_tasks_without_dp_and_refused_under_dp():
    """sequence-rnn trains at least 30 local steps a round without DP (small ECG sets answered the
    majority class at one step an epoch); under DP each step is charged, so no floor applies."""
    assert resolve(RunConfig(task="sequence-rnn", dp=False)).min_local_steps == 30
    assert resolve(RunConfig(task="sequence-rnn", dp=True)).min_local_steps == 0
    assert resolve(RunConfig(task="image-cnn", dp=False)).min_local_steps == 30
    assert resolve(RunConfig(task="image-cnn", dp=True)).min_local_steps == 0
    assert resolve(RunConfig(task="tabular", dp=False)).min_local_steps == 0
    assert cli_config("--task", "sequence-rnn", "--data", "x.npz", "--no-dp", "--min-local-steps", "5").min_local_steps == 5
    with pytest.raises(ConfigError, match="min-local-steps=5 applies to runs without DP only.*local-epochs"):
        RunConfig(task="sequence-rnn", dp=True, min_local_steps=5).validate()
    with pytest.raises(ConfigError, match="min-local-steps=-2 must be in 0..10000"):
        RunConfig(min_local_steps=-2).validate()
    with pytest.raises(ConfigError, match="min-local-steps=100000 must be in 0..10000"):  # a runaway run
        RunConfig(dp=False, min_local_steps=100_000).validate()


def test_a_small_hospital_trains_whole_epochs_up_to_min_local_steps():
    from common.training import local_epochs

    config = RunConfig(task="sequence-rnn", dp=False, batch_size=32)
    assert local_epochs(19, config) == 30  # one batch an epoch
    assert local_epochs(94, config) == 10  # 3 batches an epoch
    assert local_epochs(5000, config) == 1  # MIT-BIH-sized: local-epochs as set
    assert local_epochs(19, config.replace(local_epochs=40)) == 40
    assert local_epochs(19, config.replace(dp=True, min_local_steps=-1)) == 1
