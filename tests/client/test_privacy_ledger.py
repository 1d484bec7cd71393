"""The hospital's privacy ledger seen through the ClientApp, as Flower calls it."""

import time
import re
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from opacus.accountants import RDPAccountant

from client.app import app
from common.config import RunConfig
from common.errors import ConfigError, FedwardError
from common.ledger import PrivacyLedger
from common.training import batches_per_epoch
from fedward.ledger_view import summary
from tests.client.test_client_app import initial

SHAPE = (30,)  # builtin breast-cancer: 30 features, 2 classes


def train_message(arrays: ArrayRecord, config: RunConfig, server_round: int, run_id: str, extra=None) -> Message:
    record = ConfigRecord({**config.to_mapping(), "server-round": server_round, "fedward-run-id": run_id, **(extra or {})})
    metadata = Metadata(
        run_id=1, message_id=f"{run_id}-{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id=str(server_round), created_at=time.time(), ttl=600, message_type="train",
    )
    return Message(content=RecordDict({"arrays": arrays, "config": record}), metadata=metadata)


def hospital(ledger: Path, **settings) -> Context:
    """A fresh node context, as after a SuperNode restart: only the ledger remembers."""
    node = {"partition-id": 0, "num-partitions": 2, "privacy-ledger": str(ledger), **settings}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def run(ledger: Path, config: RunConfig, run_id: str, **settings) -> list[Message]:
    arrays, replies = initial(config, SHAPE, 2), []
    for server_round in range(1, config.num_server_rounds + 1):
        reply = app(train_message(arrays, config, server_round, run_id), hospital(ledger, **settings))
        assert not reply.has_error(), reply.error
        replies.append(reply)
        if "arrays" in reply.content:
            arrays = reply.content["arrays"]
    return replies


def test_three_runs_compose_like_one_accountant_and_a_fourth_past_the_budget_is_refused(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    runs = {"run-a": RunConfig(num_server_rounds=2, epsilon=1.0),
            "run-b": RunConfig(num_server_rounds=3, epsilon=0.5, batch_size=16),
            "run-c": RunConfig(num_server_rounds=1, epsilon=1.5)}
    history = []
    for run_id, config in runs.items():
        for reply in run(ledger, config, run_id, **{"epsilon-budget": 4.0}):
            metrics = reply.content["metrics"]
            q = 1 / batches_per_epoch(int(metrics["num-examples"]), config.batch_size)
            history.append((metrics["noise-multiplier"], q, metrics["steps"]))
        assert metrics["epsilon"] <= config.epsilon + 1e-2, "each run's own epsilon stays within its target"
    reference = RDPAccountant()
    reference.history = history
    line = summary(ledger)[0]
    assert line["spent"] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-6)
    assert [r["run_id"] for r in line["runs"]] == list(runs)
    assert line["remaining"] == pytest.approx(4.0 - line["spent"])

    refused = run(ledger, RunConfig(num_server_rounds=1, epsilon=4.0), "run-d", **{"epsilon-budget": 4.0})[0]
    assert "arrays" not in refused.content, "no update left the hospital"
    assert refused.content["refusal"]["reason"] == "budget"
    assert "budget 4" in refused.content["refusal"]["detail"]
    assert summary(ledger)[0]["spent"] == line["spent"], "the refused round was not charged"


def test_a_resumed_round_replays_its_update_without_a_second_charge(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(num_server_rounds=2, epsilon=2.0)
    arrays = initial(config, SHAPE, 2)
    first = app(train_message(arrays, config, 1, "run-r"), hospital(ledger))
    # the server died before aggregating round 1 and resumes it with the same global model
    again = app(train_message(arrays, config, 1, "run-r"), hospital(ledger))
    assert [a.numpy().tobytes() for a in first.content["arrays"].values()] == \
        [a.numpy().tobytes() for a in again.content["arrays"].values()], "same seed, same update"
    assert again.content["metrics"]["epsilon"] == first.content["metrics"]["epsilon"]
    with PrivacyLedger(ledger) as db:
        assert len(db.charges(db.datasets()[0].fingerprint)) == 1
    # a different global model gives a different update: that one is charged
    app(train_message(first.content["arrays"], config, 1, "run-r"), hospital(ledger))
    with PrivacyLedger(ledger) as db:
        assert len(db.charges(db.datasets()[0].fingerprint)) == 2


def test_the_server_cannot_set_or_bypass_a_hospitals_budget(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(num_server_rounds=1, epsilon=2.0)
    arrays = initial(config, SHAPE, 2)
    with pytest.raises(ConfigError, match="unknown setting 'epsilon-budget'"):
        app(train_message(arrays, config, 1, "run-x", {"epsilon-budget": 1000.0}), hospital(ledger, **{"epsilon-budget": 1.0}))
    with pytest.raises(ConfigError, match="unknown setting 'privacy-ledger'"):
        app(train_message(arrays, config, 1, "run-x", {"privacy-ledger": "/tmp/fresh.sqlite"}), hospital(ledger))
    # a huge delta in the run config does not buy epsilon: the hospital's delta is used
    greedy = app(train_message(arrays, RunConfig(num_server_rounds=1, epsilon=2.0, delta=0.5), 1, "run-y"),
                 hospital(ledger, **{"epsilon-budget": 1.0}))
    assert greedy.content["refusal"]["reason"] == "budget"
    # and a run without DP is refused by a hospital that keeps a ledger
    plain = app(train_message(arrays, config.replace(dp=False), 1, "run-z"), hospital(ledger))
    assert plain.content["refusal"]["reason"] == "dp-required" and "arrays" not in plain.content
    assert not PrivacyLedger(ledger).datasets() or summary(ledger)[0]["spent"] == 0


@pytest.mark.parametrize("settings, message", [
    ({"epsilon-budget": 0}, "epsilon-budget=0 must be > 0"),
    ({"epsilon-budget": -2}, "epsilon-budget=-2 must be > 0"),
    ({"delta": 0.01}, "delta=0.01 is not below 1/n"),
    ({"delta": "small"}, "delta='small' must be a number"),
])
def test_bad_privacy_settings_stop_before_training(tmp_path: Path, settings, message, capfd):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(num_server_rounds=1)
    reply = app(train_message(initial(config, SHAPE, 2), config, 1, "run"), hospital(ledger, **settings))
    assert reply.has_error() and "hospital-config" in reply.error.reason  # the server learns only that
    assert re.search(message, capfd.readouterr().err), "the hospital's log says what to fix"
    assert not ledger.exists() or not PrivacyLedger(ledger).datasets(), "nothing was recorded"


def test_a_ledger_file_that_is_not_a_ledger_stops_training(tmp_path: Path, capfd):
    bogus = tmp_path / "ledger.sqlite"
    bogus.write_bytes(b"\x00not sqlite" * 50)
    config = RunConfig(num_server_rounds=1)
    reply = app(train_message(initial(config, SHAPE, 2), config, 1, "run"), hospital(bogus))
    assert reply.has_error() and str(bogus) not in reply.error.reason
    assert f"privacy-ledger={bogus} is not a fedward privacy ledger" in capfd.readouterr().err
    assert bogus.read_bytes().startswith(b"\x00not sqlite")
