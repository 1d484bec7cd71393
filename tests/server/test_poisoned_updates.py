"""Five hospitals, three of them sending garbage: the run goes on with the honest ones;
and a round with too few usable replies is skipped.

The real round loop (server.federation) and the real ClientApp run in this
process over tests.inprocess_grid; faults are applied to the replies on the wire.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message

from client.app import app
from common.config import RunConfig
from common.errors import FedwardError
from server.federation import run_federation
from server.records import load_checkpoint
from tests.inprocess_grid import InProcessGrid


def _with_arrays(reply: Message, change) -> Message:  # type: ignore[no-untyped-def]
    if reply.has_error() or "arrays" not in reply.content:
        return reply
    reply.content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in change(reply.content["arrays"]).items()})
    return reply


def nan_update(msg: Message, reply: Message) -> Message:
    return _with_arrays(reply, lambda a: {k: np.full_like(v.numpy(), np.nan) for k, v in a.items()})


def wrong_shapes(msg: Message, reply: Message) -> Message:
    return _with_arrays(reply, lambda a: {k: np.zeros((3, *v.numpy().shape)) for k, v in a.items()})


def scaled_by_100(msg: Message, reply: Message) -> Message:
    sent = msg.content["arrays"]
    return _with_arrays(reply, lambda a: {k: sent[k].numpy() + 100 * (v.numpy() - sent[k].numpy()) for k, v in a.items()})


def run(tmp_path: Path, data_dir: Path, faults) -> dict:  # type: ignore[no-untyped-def]
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="iid", num_server_rounds=3,
                       min_hospitals=5, out_dir=str(tmp_path))
    nodes = [{"partition-id": i, "num-partitions": 5, "reproducible-noise": True} for i in range(5)]
    run_federation(InProcessGrid(app, nodes, faults), config)
    return json.loads((tmp_path / "model_card.json").read_text())


@pytest.mark.slow
def test_nan_wrong_shapes_and_x100_are_rejected_and_accuracy_holds(data_dir: Path, tmp_path: Path, capsys):
    clean = run(tmp_path / "clean", data_dir, {})
    faulty = run(tmp_path / "faulty", data_dir, {0: nan_update, 1: wrong_shapes, 2: scaled_by_100})
    log = capsys.readouterr().out
    reasons = {(r["hospital"], r["round"]): r["reason"] for r in faulty["rejected_replies"]}
    for hospital, expected in (("hospital-0", "NaN"), ("hospital-1", "shape"), ("hospital-2", "x the round's median")):
        for server_round in range(1, 4):
            assert expected in reasons[(hospital, server_round)]
        assert f"hospital {hospital} rejected: " in log
    assert not clean["rejected_replies"]
    assert len(faulty["rejected_replies"]) == 9
    clean_acc = clean["final_metrics"]["federated_evaluation"]["accuracy"]
    faulty_acc = faulty["final_metrics"]["federated_evaluation"]["accuracy"]
    print(f"clean {clean_acc:.3f} faulty {faulty_acc:.3f}")
    assert faulty_acc == pytest.approx(clean_acc, abs=0.02)
    assert clean_acc > 0.7


def test_a_round_with_too_few_replies_is_skipped_and_the_model_kept(tmp_path: Path):
    config = RunConfig(num_server_rounds=2, min_hospitals=2, min_replies=3, out_dir=str(tmp_path))
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    with pytest.raises(FedwardError, match="no round of the run had a usable update"):  # the run failed ...
        run_federation(InProcessGrid(app, nodes), config)
    card = json.loads((tmp_path / "model_card.json").read_text())  # ... and says why in its card
    assert [(s["round"], s["split"]) for s in card["rounds_skipped"]] == [(1, "train"), (2, "train")]
    assert "min-replies=3" in card["rounds_skipped"][0]["reason"]
    _, first, _ = load_checkpoint(tmp_path / "checkpoints" / "round-0001.npz")
    final = torch.load(tmp_path / "final_model.pt")
    assert all(np.array_equal(first[k], final[k].numpy()) for k in first), "the global model was kept"
