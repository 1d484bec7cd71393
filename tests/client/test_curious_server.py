"""What a curious server can learn from a hospital's replies, tried as the server would.

Each test sends the real ClientApp what a server may send and inspects only what
comes back, as the server sees it: the training statistics, the evaluations and
the error replies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from client.app import app
from client.hospital import held_out_policy
from common.config import EVALUATE_FIRST, RunConfig
from common.data import Samples, local_split
from common.tasks import load_data
from tests.client.test_client_app import initial, message

HEART_SHAPE = (10,)


def _node(data: Path, tmp: Path, **extra: object) -> Context:
    config = {"data-path": str(data), "hospital": "cleveland", "privacy-ledger": str(tmp / f"{data.stem}.sqlite"),
              "epsilon-budget": 100.0, **extra}
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


def _neighbour_in_training(data_dir: Path, tmp: Path) -> tuple[Path, Path]:
    """Two copies of Cleveland's file that differ in one patient's record, which falls in the
    hospital's training split (its held-out split is the same in both)."""
    lines = (data_dir / "heart_disease_uci" / "processed.cleveland.data").read_text().splitlines()
    first = tmp / "a" / "processed.cleveland.data"
    first.parent.mkdir()
    first.write_text("\n".join(lines) + "\n")
    fraction, seed = held_out_policy({})  # the hospital's defaults

    def split(path: Path) -> tuple[Samples, Samples]:  # before any scaling
        return local_split(load_data(RunConfig(data_path=str(path))).train, fraction, seed)

    base_train, base_test = split(first)
    for number, line in enumerate(lines):
        cells = line.split(",")
        if "?" in cells:
            continue
        cells[0] = str(float(cells[0]) + 7)  # the same patient, seven years older
        second = tmp / f"b{number}" / "processed.cleveland.data"
        second.parent.mkdir()
        second.write_text("\n".join([*lines[:number], ",".join(cells), *lines[number + 1:]]) + "\n")
        train, test = split(second)
        if np.array_equal(base_test.x, test.x) and not np.array_equal(base_train.x, train.x):
            return first, second
    raise AssertionError("no record of the training split found")


def _comparable(reply: Message) -> dict[str, object]:
    assert not reply.has_error(), reply.error
    metrics = {k: v for k, v in reply.content["metrics"].items() if k != "seconds"}
    evaluation = reply.content.config_records.get("evaluation")
    scores = {k: v for k, v in (evaluation or {}).items() if k != "seconds"}
    return {"metrics": metrics, "evaluation": scores}


def test_nothing_in_a_train_reply_but_the_noised_weights_depends_on_a_training_record(data_dir: Path, tmp_path: Path):
    """The membership attack of issue 17: train-loss (and a prior correction computed on the training
    split) told whether a target record was in training. Two hospitals whose data differ in one
    training record must send the same statistics; only the DP-noised weights may differ."""
    first, second = _neighbour_in_training(data_dir, tmp_path)
    config = RunConfig(data_path="", num_server_rounds=2, epsilon=1.0, lr=1e-9)
    arrays = initial(config, HEART_SHAPE, 2)
    seen = []
    for data in (first, second):
        train = message("train", arrays, config, 2)
        train.content["config"][EVALUATE_FIRST] = True
        seen.append(_comparable(app(train, _node(data, tmp_path))))
    assert "train-loss" not in seen[0]["metrics"]
    assert seen[0]["evaluation"], "the fused evaluation was answered"
    assert seen[0] == seen[1]
    evaluations = [app(message("evaluate", arrays, config, 2), _node(d, tmp_path)) for d in (first, second)]
    assert _comparable(evaluations[0]) == _comparable(evaluations[1])


def test_the_server_cannot_shrink_or_walk_the_held_out_split(data_dir: Path, tmp_path: Path):
    data = data_dir / "heart_disease_uci" / "processed.cleveland.data"
    arrays = initial(RunConfig(), HEART_SHAPE, 2)
    honest = app(message("evaluate", arrays, RunConfig(data_path=""), 1), _node(data, tmp_path))
    held_out = honest.content["metrics"]["num-examples"]
    assert held_out >= 0.25 * 297 - 1
    for seed in (1, 2, 3):
        probe = RunConfig(data_path="", max_samples=4, test_fraction=0.01, seed=seed)
        reply = app(message("evaluate", arrays, probe, 1), _node(data, tmp_path))
        assert reply.content["metrics"]["num-examples"] == held_out
        assert reply.content["metrics"]["loss"] == pytest.approx(honest.content["metrics"]["loss"])


def test_evaluations_stop_at_the_hospitals_limits(data_dir: Path, tmp_path: Path):
    data = data_dir / "heart_disease_uci" / "processed.cleveland.data"
    arrays = initial(RunConfig(), HEART_SHAPE, 2)
    context = _node(data, tmp_path, **{"max-evaluations": 2})
    replies = [app(message("evaluate", arrays, RunConfig(data_path=""), r), context) for r in (1, 2, 3)]
    assert not replies[0].has_error() and not replies[1].has_error()
    assert replies[2].has_error() and "max-evaluations=2" in replies[2].error.reason
    # A new run (a fresh Flower context) at the same hospital gets no fresh allowance: the ledger counts.
    again = app(message("evaluate", arrays, RunConfig(data_path=""), 1), _node(data, tmp_path, **{"max-evaluations": 2}))
    assert again.has_error() and "max-evaluations=2" in again.error.reason
    small = tmp_path / "processed.small.data"
    small.write_text("\n".join(data.read_text().splitlines()[:24]) + "\n")
    reply = app(message("evaluate", arrays, RunConfig(data_path=""), 1), _node(small, tmp_path))
    assert reply.has_error() and "min-eval-size=10" in reply.error.reason
    assert "cleveland" in reply.error.reason  # named, not node-7


def test_a_bad_row_stays_at_the_hospital(data_dir: Path, tmp_path: Path, capfd):
    marker = "PATIENT-7F3A-SECRET"
    lines = (data_dir / "heart_disease_uci" / "processed.va.data").read_text().splitlines()
    bad = tmp_path / "wards" / "processed.va.data"
    bad.parent.mkdir()
    bad.write_text("\n".join([*lines[:5], f"63,1,{marker},145,233,1,2,150,0,2.3,3,0,6,0", *lines[5:]]) + "\n")
    config = RunConfig(data_path="", num_server_rounds=1)
    incidents = tmp_path / "incidents.log"
    context = _node(bad, tmp_path, hospital="va", **{"incident-log": str(incidents)})
    for kind in ("train", "evaluate", "query"):
        reply = app(message(kind, initial(config, HEART_SHAPE, 2), config, 1), context)
        assert reply.has_error()
        reason = reply.error.reason
        assert marker not in reason and str(tmp_path) not in reason and "line 6" not in reason
        assert reason.startswith("hospital va: bad-data: 1 row of processed.va.data could not be read"), reason
    detail = capfd.readouterr()
    assert marker in detail.err and marker in incidents.read_text()


def test_a_bad_row_never_reaches_the_run_directory(data_dir: Path, tmp_path: Path, capsys):
    """A whole run (the real round loop over the real ClientApp): the marker of a bad row appears
    nowhere the server writes, and the hospital is named."""
    from server.federation import run_federation
    from tests.inprocess_grid import InProcessGrid

    marker = "PATIENT-9C1B-SECRET"
    folder = data_dir / "heart_disease_uci"
    bad = tmp_path / "va" / "processed.va.data"
    bad.parent.mkdir()
    lines = (folder / "processed.va.data").read_text().splitlines()
    bad.write_text("\n".join([*lines[:3], f"{marker},1,4,145,233,1,2,150,0,2.3,3,0,6,1", *lines[3:]]) + "\n")
    nodes = [{"data-path": str(folder / "processed.cleveland.data"), "hospital": "cleveland"},
             {"data-path": str(folder / "processed.hungarian.data"), "hospital": "hungarian"},
             {"data-path": str(bad), "hospital": "va"}]
    for i, node in enumerate(nodes):
        node.update({"privacy-ledger": str(tmp_path / f"ledger{i}.sqlite"), "epsilon-budget": 100.0})
    out = tmp_path / "run"
    config = RunConfig(data_path="", num_server_rounds=2, min_hospitals=3, out_dir=str(out))
    run_federation(InProcessGrid(app, nodes), config)
    server_log = capsys.readouterr().out
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    for place in (server_log, written):
        assert marker not in place
    card = (out / "model_card.json").read_text()
    assert "va" in card and "bad-data" in card and "node-" not in card
