"""LSTM / GRU classifiers: torch's own one-layer, batch-first recurrent layers.

Server and client build the same module, so state-dict keys always match. Under DP
they train with fedward's per-sample mode ("layers", common/per_sample.py), which
keeps torch's fused recurrence; `recurrent_layers=OPACUS_LAYERS` swaps in Opacus's DPLSTM/DPGRU
(the same parameters and outputs, a Python loop per time step) for benchmarks that
compare Opacus's own modes.
"""

from __future__ import annotations

import torch
from opacus.layers import DPGRU, DPLSTM
from torch import nn

from common.config import RunConfig
from common.errors import ConfigError

TORCH_LAYERS: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU}
OPACUS_LAYERS: dict[str, type[nn.Module]] = {"lstm": DPLSTM, "gru": DPGRU}  # what Opacus's own modes need


class RNNClassifier(nn.Module):
    def __init__(self, features: int, num_classes: int, cell: str, hidden: int = 32,
                 recurrent_layers: dict[str, type[nn.Module]] = TORCH_LAYERS) -> None:
        super().__init__()
        self.rnn = recurrent_layers[cell](features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def build_rnn(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    cell = config.model or "lstm"
    if cell not in ("lstm", "gru"):
        raise ConfigError(f"model={cell!r} is not a sequence model; use lstm or gru")
    return RNNClassifier(features=input_shape[-1], num_classes=num_classes, cell=cell)
