"""Logistic regression (default) or a small MLP; both Opacus-ready as they stand."""

from __future__ import annotations

from torch import nn

from common.config import RunConfig
from common.errors import ConfigError

DEFAULT_MODEL = "logreg"


def build_tabular_model(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    features = input_shape[0]
    variant = config.model or DEFAULT_MODEL
    if variant == "logreg":
        return nn.Linear(features, num_classes)
    if variant == "mlp":
        return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, num_classes))
    raise ConfigError(f"model={variant!r} is not a tabular model; use logreg or mlp")
