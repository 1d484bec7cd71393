"""The ClientApp's handlers called as Flower calls them, without a simulation."""

import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from opacus.accountants import RDPAccountant

from client.app import app
from common.class_prior import histogram_entry
from common.config import EVALUATE_FIRST, RunConfig
from common.tasks import get_task, resolve
from common.training import batches_per_epoch


def message(kind: str, arrays: ArrayRecord, config: RunConfig, server_round: int) -> Message:
    record = ConfigRecord({**config.to_mapping(), "server-round": server_round})
    metadata = Metadata(
        run_id=1, message_id=f"m{server_round}{kind}", src_node_id=0, dst_node_id=7,
        reply_to_message_id="", group_id=str(server_round), created_at=time.time(), ttl=600,
        message_type=kind,
    )
    return Message(content=RecordDict({"arrays": arrays, "config": record}), metadata=metadata)


def initial(config: RunConfig, shape, classes) -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(get_task(config.task).build_model(shape, classes, config).state_dict())


def test_epsilon_after_each_round_is_the_cumulative_one(data_dir: Path):
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural",
                       num_server_rounds=3, epsilon=1.0, lr=0.1)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    arrays = initial(config, (10,), 2)
    reported = []
    for server_round in (1, 2, 3):
        reply = app(message("train", arrays, config, server_round), context)
        assert not reply.has_error(), reply.error
        metrics = reply.content["metrics"]
        reported.append((metrics["epsilon"], metrics["noise-multiplier"], metrics["steps"], metrics["num-examples"]))
        arrays = reply.content["arrays"]
    noise = reported[0][1]
    assert all(r[1] == noise for r in reported), "noise is derived once for the run"
    q = 1 / batches_per_epoch(reported[0][3], resolve(config).batch_size)  # 0: the task's default
    reference = RDPAccountant()
    released = [histogram_entry()] if "class-prior" in reply.content else []  # the class histogram, if sent
    reference.history = [*released, (noise, q, sum(r[2] for r in reported))]
    assert reported[-1][0] == pytest.approx(reference.get_epsilon(config.delta), abs=1e-6)
    assert reported[0][0] < reported[1][0] < reported[2][0] <= 1.0 + 1e-2
    assert reply.content["hospital"]["name"] == "cleveland"


def test_evaluate_reports_metrics_on_held_out_data(data_dir: Path):
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"))
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(data_dir / "heart_disease_uci" / "processed.va.data")},
                      state=RecordDict(), run_config={})
    reply = app(message("evaluate", initial(config, (10,), 2), config, 1), context)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 33  # a quarter of VA's 130 rows, held out
    assert 0 <= metrics["accuracy"] <= 1 and "arrays" not in reply.content
    assert reply.content["hospital"]["name"] == "processed.va"


def test_hospital_without_data_path_gets_a_clear_refusal():
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    config = RunConfig()
    reply = app(message("train", initial(config, (30,), 2), config, 1), context)
    assert reply.has_error() and "hospital-config" in reply.error.reason


def test_weights_for_another_model_are_refused_before_training(data_dir: Path):
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    reply = app(message("train", initial(config, (13,), 2), config, 1), context)
    assert reply.has_error() and "do not fit this task's model" in reply.error.reason
    assert not context.state.config_records, "nothing was trained or recorded"


def test_fused_train_message_evaluates_the_received_model_before_training(data_dir: Path):
    """The `evaluation` in a fused train reply is the received model's score, the same as
    an evaluate message with that model gets; the trained weights are not what was scored."""
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural", lr=0.5)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    arrays = initial(config, (10,), 2)
    alone = app(message("evaluate", arrays, config, 2), context).content["metrics"]
    fused = message("train", arrays, config, 2)
    fused.content["config"][EVALUATE_FIRST] = True
    reply = app(fused, context)
    assert not reply.has_error(), reply.error
    evaluation = reply.content["evaluation"]
    for key in ("num-examples", "loss", "accuracy", "auroc"):
        assert evaluation[key] == pytest.approx(alone[key]), key
    assert len(reply.content.metric_records) == 1, "the strategies' contract: one MetricRecord per reply"
    after = app(message("evaluate", reply.content["arrays"], config, 2), context).content["metrics"]
    assert after["loss"] != pytest.approx(evaluation["loss"]), "the model was scored before it was trained"
    plain = app(message("train", arrays, config, 3), context)
    assert "evaluation" not in plain.content, "only when the server asks"



def test_each_round_trains_at_the_scheduled_lr_and_spends_the_same_epsilon(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch,
):
    """lr-schedule=cosine: round r of 4 trains at lr x (1 + cos(pi (r-1)/4)) / 2, as the hospital's
    training sees it; the noise and the epsilon after each round are those of a constant lr."""
    import dataclasses
    import math

    import client.app as client_app

    seen: list[float] = []

    def spying(name: str):
        task = get_task(name)

        def train(model, data, classes, config, *rest, **kw):
            seen.append(config.lr)
            return task.train(model, data, classes, config, *rest, **kw)

        return dataclasses.replace(task, train=train)

    monkeypatch.setattr(client_app, "get_task", spying)

    def run(schedule: str) -> list[tuple[float, float]]:
        seen.clear()
        config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural", num_server_rounds=4,
                           epsilon=1.0, lr=0.2, lr_schedule=schedule)
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                          state=RecordDict(), run_config={})
        arrays, account = initial(config, (10,), 2), []
        for server_round in (1, 2, 3, 4):
            reply = app(message("train", arrays, config, server_round), context)
            assert not reply.has_error(), reply.error
            assert reply.content["metrics"]["lr"] == seen[-1], "the reply names the lr the round trained with"
            account.append((reply.content["metrics"]["epsilon"], reply.content["metrics"]["noise-multiplier"]))
            arrays = reply.content["arrays"]
        return account

    cosine = run("cosine")
    assert seen == pytest.approx([0.2 * (1 + math.cos(math.pi * r / 4)) / 2 for r in range(4)])
    assert seen[0] == 0.2 and seen[-1] < 0.2 * 0.15
    constant = run("constant")
    assert seen == [0.2] * 4
    flat = [value for row in cosine for value in row]
    assert flat == pytest.approx([value for row in constant for value in row], abs=1e-9), \
        "the schedule does not touch the noise or the epsilon"
