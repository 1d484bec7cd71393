"""LSTM / GRU classifiers built from Opacus's DP layers, in the shared definition.

Server and client build the same module, so state-dict keys always match.
"""

from __future__ import annotations

import torch
from opacus.layers import DPGRU, DPLSTM
from torch import nn

from common.config import RunConfig
from common.errors import ConfigError


class RNNClassifier(nn.Module):
    def __init__(self, features: int, num_classes: int, cell: str, hidden: int = 32) -> None:
        super().__init__()
        layer = {"lstm": DPLSTM, "gru": DPGRU}[cell]
        self.rnn = layer(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def build_rnn(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    cell = config.model or "lstm"
    if cell not in ("lstm", "gru"):
        raise ConfigError(f"model={cell!r} is not a sequence model; use lstm or gru")
    return RNNClassifier(features=input_shape[-1], num_classes=num_classes, cell=cell)
