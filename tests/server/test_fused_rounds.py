"""Fused rounds: one message per hospital per round, the same federated evaluation.

The real round loop and the real ClientApp, in this process (tests.inprocess_grid).
"""

import json
from collections import Counter
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from client.app import app
from common.config import RunConfig
from server.federation import run_federation
from tests.inprocess_grid import InProcessGrid

ROUNDS, HOSPITALS = 3, 3


class CountingGrid(InProcessGrid):
    """Counts the messages each node is sent, by type."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.sent: Counter[tuple[int, str]] = Counter()

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.sent.update((m.metadata.dst_node_id, m.metadata.message_type) for m in messages)
        return super().push_messages(messages)


def run(tmp_path: Path, fused: bool) -> tuple[list[dict], Counter]:
    config = RunConfig(data_path="builtin:breast-cancer", num_server_rounds=ROUNDS, dp=False,
                       min_hospitals=HOSPITALS, fused_rounds=fused, out_dir=str(tmp_path))
    grid = CountingGrid(app, [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)])
    run_federation(grid, config)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return rows, grid.sent


def _evaluations(rows: list[dict]) -> dict[tuple[int, str], tuple[float, float]]:
    return {(r["round"], r["hospital"]): (r["loss"], r["accuracy"]) for r in rows if r["split"] == "evaluate"}


def test_fused_rounds_send_half_the_messages_and_evaluate_the_same_models(tmp_path: Path):
    separate_rows, separate_sent = run(tmp_path / "separate", fused=False)
    fused_rows, fused_sent = run(tmp_path / "fused", fused=True)
    for node in range(100, 100 + HOSPITALS):
        assert (separate_sent[node, "train"], separate_sent[node, "evaluate"]) == (ROUNDS, ROUNDS)
        assert (fused_sent[node, "train"], fused_sent[node, "evaluate"]) == (ROUNDS, 1)
    separate, fused = _evaluations(separate_rows), _evaluations(fused_rows)
    assert set(fused) == set(separate) and len(fused) == ROUNDS * (HOSPITALS + 1)  # + the "all" row per round
    for key, (loss, accuracy) in separate.items():
        assert fused[key][0] == pytest.approx(loss, rel=1e-5), key
        assert fused[key][1] == pytest.approx(accuracy), key
    card = json.loads((tmp_path / "fused" / "model_card.json").read_text())
    assert card["final_metrics"]["federated_evaluation"]["round"] == ROUNDS



def test_a_malformed_evaluation_is_set_aside_naming_the_hospital(tmp_path: Path):
    def boast(msg, reply):  # type: ignore[no-untyped-def]
        if not reply.has_error() and "evaluation" in reply.content:
            reply.content["evaluation"] = ConfigRecord({"accuracy": "excellent"})
        return reply

    config = RunConfig(data_path="builtin:breast-cancer", num_server_rounds=2, dp=False, min_hospitals=HOSPITALS,
                       out_dir=str(tmp_path))
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)]
    run_federation(InProcessGrid(app, nodes, {0: boast}), config)
    rejections = [json.loads(line) for line in (tmp_path / "rejections.jsonl").read_text().splitlines()]
    assert {"round": 1, "hospital": "hospital-0", "split": "evaluate",
            "reason": "evaluation needs a whole num-examples >= 0"} in rejections
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = {r["hospital"] for r in rows if r["round"] == 1 and r["split"] == "evaluate"}
    assert first == {"hospital-1", "hospital-2", "all"}, "the others' scores still count"
