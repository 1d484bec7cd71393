"""A hospital's class-histogram release (common/class_prior.py), through the real ClientApp:
charged in the run's account, drawn once per run, resent unchanged, never exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant

from client.app import app
from client.hospital import hospital_data
from common.class_prior import HISTOGRAM_NOISE, unit_histogram
from common.config import RunConfig
from common.ledger import PrivacyLedger
from common.training import dp_plan
from tests.client.test_client_app import initial, message
from tests.client.test_privacy_unit_account import ward


def _node(tmp: Path, ledger: bool = True, patients: bool = False) -> Context:
    data = ward(tmp / "ward.csv", patients)
    config: dict = {"data-path": str(data), "hospital": "ward", "epsilon-budget": 10.0, "delta": 1e-3}
    if ledger:
        config["privacy-ledger"] = str(tmp / "ledger.sqlite")
    else:
        config = {"partition-id": 0, "num-partitions": 1}
    return Context(run_id=1, node_id=7, state=RecordDict(), run_config={}, node_config=config)


CONFIG = RunConfig(data_path="", num_server_rounds=2, batch_size=8, epsilon=2.0)


def _train(context: Context, server_round: int, config: RunConfig = CONFIG):  # type: ignore[no-untyped-def]
    reply = app(message("train", initial(config, (2,), 2), config, server_round), context)
    assert not reply.has_error(), reply.error
    return reply


@pytest.mark.parametrize("patients", [False, True], ids=["records", "patients"])
def test_epsilon_is_the_accountant_fed_the_histogram_and_the_steps(tmp_path: Path, patients: bool):
    context = _node(tmp_path, patients=patients)
    replies = [_train(context, r) for r in (1, 2)]
    metrics = replies[-1].content["metrics"]
    plan = dp_plan(hospital_data(CONFIG, context.node_config).train, CONFIG)
    accountant = RDPAccountant()
    accountant.history = [(HISTOGRAM_NOISE, 1.0, 1), (metrics["noise-multiplier"], plan.sample_rate, plan.planned_steps)]
    assert metrics["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), abs=1e-9)
    assert CONFIG.epsilon - 0.005 <= metrics["epsilon"] <= CONFIG.epsilon, "histogram + all steps meet the target"
    assert replies[0].content["class-prior"]["unit"] == ("patient" if patients else "record")


def test_the_histogram_is_drawn_once_per_run_and_resent_unchanged(tmp_path: Path):
    context = _node(tmp_path)
    first, second = _train(context, 1), _train(context, 2)
    counts = list(first.content["class-prior"]["counts"])
    assert list(second.content["class-prior"]["counts"]) == counts
    again = _train(context, 2)  # a resumed run asks for round 2 again: the kept reply, the same histogram
    assert list(again.content["class-prior"]["counts"]) == counts
    with PrivacyLedger(tmp_path / "ledger.sqlite") as book:
        (line,) = book.datasets()
        rounds = [c.round for c in book.charges(line.name)]
    assert rounds.count(-1) == 1 and sorted(rounds) == [-1, 1, 2], "one histogram charge, one per round"


def test_without_a_ledger_the_node_context_keeps_the_one_release(tmp_path: Path):
    context = _node(tmp_path, ledger=False)
    config = CONFIG.replace(data_path=str(tmp_path / "ward.csv"))
    first, second = _train(context, 1, config), _train(context, 2, config)
    assert list(first.content["class-prior"]["counts"]) == list(second.content["class-prior"]["counts"])


def test_no_exact_histogram_leaves_and_none_without_the_rule(tmp_path: Path):
    context = _node(tmp_path)
    reply = _train(context, 1)
    train = hospital_data(CONFIG, context.node_config).train
    exact = unit_histogram(train.y, 2)
    sent = np.array(reply.content["class-prior"]["counts"])
    assert not np.allclose(sent, exact) and not np.allclose(sent, np.round(sent))
    (tmp_path / "off").mkdir()
    off = _node(tmp_path / "off")
    assert "class-prior" not in _train(off, 1, CONFIG.replace(balanced_decision=False)).content
    plain = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                    node_config={"partition-id": 0, "num-partitions": 1})
    no_dp = CONFIG.replace(dp=False, data_path=str(tmp_path / "ward.csv"))
    assert "class-prior" not in _train(plain, 1, no_dp).content, "without DP nothing is released"


def test_a_small_epsilon_trains_without_the_release_instead_of_failing(tmp_path: Path, capsys: pytest.CaptureFixture):
    """At epsilon 0.3 the histogram alone (epsilon ~0.4 standalone at this delta) would not fit: the
    hospital trains, spends at most 0.3 over both rounds, and sends no class prior, in any round."""
    config = CONFIG.replace(epsilon=0.3)
    context = _node(tmp_path)
    replies = [_train(context, r, config) for r in (1, 2)]
    assert all("class-prior" not in r.content for r in replies)
    assert "too small to release the class histogram" in capsys.readouterr().out, "said in the hospital's log"
    metrics = replies[-1].content["metrics"]
    plan = dp_plan(hospital_data(config, context.node_config).train, config)
    accountant = RDPAccountant()
    accountant.history = [(metrics["noise-multiplier"], plan.sample_rate, plan.planned_steps)]
    assert metrics["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), abs=1e-9)
    assert config.epsilon - 0.005 <= metrics["epsilon"] <= config.epsilon
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert all(c.round >= 1 for c in ledger.charges("ward")), "no release charged"


def _skewed_ward(path: Path, visits: int, patients: int = 0) -> Path:
    """`visits` rows, 80% of label 0; with `patients`, each row names one of that many patients."""
    rng = np.random.default_rng(1)
    header = "age,bp,label" + (",patient" if patients else "")
    rows = [f"{40 + rng.integers(30)},{110 + rng.integers(40)},{int(rng.random() < 0.2)}"
            + (f",p{i % patients}" if patients else "") for i in range(visits)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_balanced_task_trains_with_weights_from_its_own_release_and_the_server_divides_by_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where the task trains balanced (sequence-rnn), each round's DP training weights the classes by
    common/class_prior.py's rule on the hospital's own *noisy* histogram (post-processing of the
    release, so free), the same in every round; the reply says which weights, and the server's
    balanced rule divides by the histogram the model was trained on. A release of few units (24
    patients, noise 10 per class) is too noisy to weight by: that hospital trains unweighted."""
    import dataclasses

    import common.tasks.tabular as tabular
    from common.class_prior import trained_histogram, training_weights
    from server.operating_point import received_priors

    seen: list[list[float] | None] = []
    original = tabular.TASK.train

    def spy(model, data, classes, config, dp, device, seed):  # type: ignore[no-untyped-def]
        seen.append(dp.class_weights if dp is not None else None)
        return original(model, data, classes, config, dp, device, seed)

    monkeypatch.setattr(tabular, "TASK", dataclasses.replace(tabular.TASK, balanced_training=True, train=spy))
    context = _node(tmp_path)
    _skewed_ward(Path(context.node_config["data-path"]), 800)
    config = CONFIG.replace(batch_size=64)
    first, second = _train(context, 1, config), _train(context, 2, config)
    counts = np.array(first.content["class-prior"]["counts"])
    expected = [float(w) for w in training_weights(counts)]
    assert seen == [expected, expected], "both rounds, from the released histogram"
    train = hospital_data(config, context.node_config).train
    assert not np.allclose(expected, training_weights(unit_histogram(train.y, 2))), "not from exact counts"
    assert expected[0] < 0.75 and expected[1] == 1.0, "the common class is weighted down"
    assert list(second.content["class-prior"]["training-weights"]) == expected
    (prior,) = received_priors([second], 2).values()
    assert np.allclose(prior, trained_histogram(counts, np.array(expected)))
    second.content["class-prior"]["training-weights"] = [2.0, 1.0]  # a weight above 1 is no DP weight
    assert received_priors([second], 2) == {}

    (tmp_path / "few").mkdir()
    few = _node(tmp_path / "few", patients=True)
    _skewed_ward(Path(few.node_config["data-path"]), 240, patients=24)
    seen.clear()
    reply = _train(few, 1, config)
    assert "training-weights" not in reply.content["class-prior"] and seen == [None]
    monkeypatch.setattr(tabular, "TASK", dataclasses.replace(tabular.TASK, balanced_training=False))
    (tmp_path / "plain").mkdir()
    assert "training-weights" not in _train(_node(tmp_path / "plain"), 1).content["class-prior"]
