import pytest

from common.config import RunConfig
from common.errors import ConfigError


def test_defaults_round_trip_through_run_config_keys():
    config = RunConfig(task="image-cnn", epsilon=8.0, partition="dirichlet:0.5")
    assert RunConfig.from_mapping(config.to_mapping()) == config


def test_strings_from_the_command_line_are_coerced():
    config = RunConfig.from_mapping({"num-server-rounds": "5", "dp": "false", "epsilon": "1.5"})
    assert (config.num_server_rounds, config.dp, config.epsilon) == (5, False, 1.5)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"num-rounds": 3}, "unknown setting 'num-rounds'"),
        ({"num-server-rounds": -1}, "num-server-rounds=-1 must be > 0"),
        ({"num-server-rounds": 2.5}, "num-server-rounds=2.5 must be an integer"),
        ({"epsilon": 0}, "epsilon=0.0 must be > 0"),
        ({"epsilon": -1}, "epsilon=-1.0 must be > 0"),
        ({"delta": 1.0}, "delta=1.0 must be in (0, 1)"),
        ({"lr": -0.1}, "lr=-0.1 must be > 0"),
        ({"dp": "maybe"}, "dp='maybe' must be true or false"),
        ({"task": "segmentation"}, "task='segmentation' is not known"),
        ({"strategy": "fedsgd"}, "strategy='fedsgd' is not known"),
        ({"partition": "dirichlet:-1"}, "Dirichlet alpha must be a positive"),
        ({"partition": "by-age"}, "partition='by-age' is not known"),
        ({"test-fraction": 1.5}, "test-fraction=1.5 must be in (0, 1)"),
        ({"epsilon": "inf"}, "must be a finite number"),
        ({"class-weighting": "sometimes"}, "class-weighting='sometimes' must be auto"),
        ({"server-momentum": 1.0}, "server-momentum=1.0 must be in [0, 1)"),
        ({"balanced-tau": -1}, "balanced-tau=-1.0 must be a finite number > 0 (or 0 for the task's default)"),
        ({"balanced-tau": 2, "dp": False}, "balanced-tau=2.0 is the balanced rule's tau, which applies only under DP"),
        ({"balanced-tau": 2, "balanced-decision": False}, "this run has balanced-decision=false: leave it out"),
        ({"server-momentum": 0.5, "strategy": "fedprox"}, "server-momentum=0.5 applies to strategy fedavg only"),
        ({"server-momentum": 0.5, "central-dp-noise": 1.0}, "server-momentum > 0 cannot go with central-dp-noise"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(values, named):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert named in str(err.value)


def test_no_dp_run_ignores_the_epsilon_value():
    assert RunConfig.from_mapping({"dp": False, "epsilon": 0}).dp is False


def test_strategy_injected_keys_are_accepted():
    config = RunConfig.from_mapping({"server-round": 3, "proximal-mu": 0.5})
    assert config.proximal_mu == 0.5


def test_pyproject_declares_every_run_config_key_with_its_default():
    import tomllib

    from tests.conftest import PROJECT_ROOT

    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_mapping()
    assert set(declared) == set(defaults)  # flwr run refuses --run-config keys not declared
    assert RunConfig.from_mapping(declared) == RunConfig(out_dir=declared["out-dir"])


def test_class_weighting_written_as_before_still_reads():
    """Run configs written before class-weighting took "auto" said true or false (a TOML bool)."""
    assert RunConfig.from_mapping({"class-weighting": True}).class_weighting == "true"
    assert RunConfig.from_mapping({"class-weighting": "False"}).class_weighting == "false"


def test_task_defaults_without_dp_give_image_cnn_fedavgm_without_class_weights_and_keep_explicit_choices():
    """image-cnn's no-DP recipe (docs/benchmarks.md, "image-cnn without DP: the default FedAvgM recipe"):
    server momentum 0.7 and no class weights; sequence-rnn's DP recipe: momentum 0.5; every other case,
    and every run behind central DP or with another strategy, keeps plain FedAvg."""
    from common.tasks import resolve

    image = resolve(RunConfig(task="image-cnn", dp=False))
    assert (image.class_weighting, image.server_momentum, image.lr) == ("false", 0.7, 0.003)
    assert resolve(RunConfig(task="tabular", dp=False)).class_weighting == "true"
    assert resolve(RunConfig(task="tabular", dp=False)).server_momentum == 0.0
    assert resolve(RunConfig(task="image-cnn", dp=True)).server_momentum == 0.0
    assert resolve(RunConfig(task="sequence-rnn", dp=True)).server_momentum == 0.5
    assert resolve(RunConfig(task="sequence-rnn", dp=False)).server_momentum == 0.0
    assert resolve(RunConfig(task="sequence-rnn")).balanced_tau == 1.5  # the balanced rule's tau
    assert resolve(RunConfig(task="tabular")).balanced_tau == 1.0
    assert resolve(RunConfig(task="sequence-rnn", balanced_tau=1.0)).balanced_tau == 1.0
    assert resolve(RunConfig(task="sequence-rnn", dp=False)).balanced_tau == 0  # no rule: nothing to fill in
    assert resolve(RunConfig(task="sequence-rnn", secure_aggregation=True)).balanced_tau == 0  # no release, no rule
    assert resolve(RunConfig(task="image-cnn", dp=False, strategy="fedprox")).server_momentum == 0.0
    assert resolve(RunConfig(task="image-cnn", dp=False, central_dp_noise=1.0)).server_momentum == 0.0
    explicit = resolve(RunConfig(task="image-cnn", dp=False, class_weighting="true", server_momentum=0.0))
    assert (explicit.class_weighting, explicit.server_momentum) == ("true", 0.0)
