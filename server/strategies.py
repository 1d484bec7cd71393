"""The run's `strategy` name -> a strategy from flwr.serverapp.strategy.

Metrics are averaged by our own NaN-aware mean (AUROC is undefined on a held-out
set with one class), weighted by `num-examples` as Flower's default does.
"""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from common.config import RunConfig
from server import central_dp


def weighted_nanmean(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Per metric: the num-examples weighted mean over the replies where it is finite."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        w = float(metrics[weight_key])  # type: ignore[arg-type]
        for key, value in metrics.items():
            if key == weight_key or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            sums[key] = sums.get(key, 0.0) + w * float(value)
            weights[key] = weights.get(key, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums if weights[k] > 0})


def build_strategy(config: RunConfig) -> Strategy:
    common = {
        "min_train_nodes": config.min_hospitals,
        "min_evaluate_nodes": config.min_hospitals,
        "min_available_nodes": config.min_hospitals,
        "train_metrics_aggr_fn": weighted_nanmean,
        "evaluate_metrics_aggr_fn": weighted_nanmean,
    }
    name = config.strategy
    if config.central_dp_noise > 0:  # unweighted FedAvg/FedProx inside Flower's DP wrapper
        common["weighted_by_key"] = central_dp.WEIGHT_KEY
        inner = FedAvg(**common) if name == "fedavg" else FedProx(proximal_mu=config.proximal_mu, **common)
        return central_dp.wrap(inner, config)
    if name == "fedavg" and config.server_momentum > 0:  # server momentum on the mean update
        return FedAvgM(server_learning_rate=1.0, server_momentum=config.server_momentum, **common)
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(proximal_mu=config.proximal_mu, **common)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        cls = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[name]
        return cls(eta=config.server_lr, eta_l=config.lr, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=config.trim_beta, **common)
    if name == "krum":
        return Krum(**common)
    raise ValueError(f"strategy {name!r} has no builder")  # RunConfig.validate prevents this
