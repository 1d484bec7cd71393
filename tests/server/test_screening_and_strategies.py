import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from common.config import STRATEGY_NAMES, RunConfig
from server.screening import screen
from server.strategies import build_strategy, weighted_nanmean

SHAPES = {"w": (3, 2), "b": (2,)}


def reply(name: str, arrays: dict[str, np.ndarray] | None, n: int = 10, error: str | None = None, **metrics) -> Message:
    metadata = Metadata(run_id=1, message_id=name, src_node_id=hash(name) % 1000, dst_node_id=0,
                        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=60,
                        message_type="train")
    if error:
        return Message(error=Error(code=0, reason=error), metadata=metadata)
    content = RecordDict({"metrics": MetricRecord({"num-examples": n, **metrics}),
                          "hospital": ConfigRecord({"name": name})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content=content, metadata=metadata)


def good(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, dtype=np.float32) for k, s in SHAPES.items()}


REFERENCE = ArrayRecord({k: Array(v) for k, v in good(0.0).items()})


def test_broken_updates_are_rejected_with_the_hospital_and_reason():
    nan = good(1.0)
    nan["w"][0, 0] = np.nan
    replies = [
        reply("a", good(1.0)),
        reply("b", nan),
        reply("c", {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}),
        reply("d", {"w": np.zeros((3, 2), np.float32)}),
        reply("e", None, error="budget exhausted"),
    ]
    accepted, rejected = screen(replies, REFERENCE, train=True)
    assert [m.content["hospital"]["name"] for m in accepted] == ["a"]
    reasons = {r.hospital: r.reason for r in rejected}
    assert reasons["b"] == "weight w holds NaN or Inf"
    assert reasons["c"] == "weight w has shape (2, 2), expected (3, 2)"
    assert reasons["d"] == "weights have different keys from the global model"
    assert "budget exhausted" in next(r.reason for r in rejected if r.hospital.startswith("node-"))


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_aggregates_three_hospitals(name):
    strategy = build_strategy(RunConfig(strategy=name, lr=0.1))
    if hasattr(strategy, "current_arrays"):  # FedOpt family keeps the global model
        strategy.current_arrays = {k: a.numpy() for k, a in REFERENCE.items()}
    replies = [reply(h, good(v), n=10, accuracy=a) for h, v, a in (("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 3.0, 0.9))]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = {k: a.numpy() for k, a in arrays.items()}
    assert {k: v.shape for k, v in out.items()} == SHAPES
    if name in ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg"):
        assert np.allclose(out["w"], 2.0)  # equal weights: mean = median = trimmed mean


def test_server_momentum_carries_the_last_round_s_step_into_the_next():
    """FedAvg with server momentum m (FedAvgM): the global model moves by the mean update plus m times
    the previous move, so a run that keeps moving one way speeds up; m = 0 is FedAvg exactly."""
    config = RunConfig(task="image-cnn", dp=False, server_momentum=0.5)
    strategy = build_strategy(config)
    plain = build_strategy(RunConfig(task="image-cnn", dp=False, server_momentum=0.0))
    assert type(strategy).__name__ == "FedAvgM" and type(plain).__name__ == "FedAvg"
    strategy.current_arrays = REFERENCE
    first, _ = strategy.aggregate_train(1, [reply("a", good(1.0)), reply("b", good(3.0))])
    assert np.allclose(first["w"].numpy(), 2.0)  # the first move is the mean update
    second, _ = strategy.aggregate_train(2, [reply("a", good(3.0)), reply("b", good(5.0))])
    assert np.allclose(second["w"].numpy(), 2.0 + 2.0 + 0.5 * 2.0)  # mean update 2 + half the last move
    same, _ = plain.aggregate_train(2, [reply("a", good(3.0)), reply("b", good(5.0))])
    assert np.allclose(same["w"].numpy(), 4.0)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_strategies_resist_one_update_scaled_by_100(name):
    def replies():  # fresh each time: FedMedian and FedTrimmedAvg pop the arrays they read
        return [reply(f"h{i}", good(v)) for i, v in enumerate((1.0, 1.1, 1.2, 1.3, 100.0))]

    robust, _ = build_strategy(RunConfig(strategy=name)).aggregate_train(1, replies())
    plain, _ = build_strategy(RunConfig(strategy="fedavg")).aggregate_train(1, replies())
    assert abs(float(robust["w"].numpy().mean()) - 1.15) < 0.2
    assert float(plain["w"].numpy().mean()) > 10


def test_metric_mean_skips_undefined_auroc():
    replies = [reply("a", None, n=10, auroc=float("nan"), accuracy=0.5),
               reply("b", None, n=30, auroc=0.8, accuracy=0.9)]
    mean = weighted_nanmean([m.content for m in replies], "num-examples")
    assert mean["auroc"] == pytest.approx(0.8) and mean["accuracy"] == pytest.approx(0.8)
