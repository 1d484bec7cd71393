"""Sequence classifiers: a 1-D convolutional front end then an LSTM / GRU (the default,
`cnn-lstm` / `cnn-gru`), or the plain recurrent layer alone (`lstm` / `gru`); torch's own
one-layer, batch-first recurrent layers either way.

The front end (two strided convolutions with GroupNorm) learns the beat's morphology
and hands the recurrent layer a sequence a quarter as long; the head also sees each
channel's mean over time, which for MIT-BIH beats are the RR-interval and shape features
relative to the patient's own beats (the cues inter-patient classification relies on,
de Chazal et al. 2004; common/tasks/sequence_rnn/dataset.py).

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


class ConvRNNClassifier(nn.Module):
    """Conv1d -> GroupNorm -> ReLU (x2, stride 2 each) -> LSTM/GRU; head on the last hidden
    state and the input channels' means over time."""

    def __init__(self, features: int, num_classes: int, cell: str, channels: int = 32, hidden: int = 32) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(features, channels, 7, stride=2, padding=3), nn.GroupNorm(4, channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.GroupNorm(4, channels), nn.ReLU(),
        )
        self.rnn = TORCH_LAYERS[cell](channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden + features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, features)
        h = self.front(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.rnn(h)
        return self.head(torch.cat([out[:, -1], x.mean(dim=1)], dim=1))


MODELS = ("cnn-lstm", "cnn-gru", "lstm", "gru")
DEFAULT_MODEL = "cnn-lstm"


def build_rnn(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    name = config.model or DEFAULT_MODEL
    if name not in MODELS:
        raise ConfigError(f"model={name!r} is not a sequence model; use one of {', '.join(MODELS)}")
    if name.startswith("cnn-"):
        return ConvRNNClassifier(features=input_shape[-1], num_classes=num_classes, cell=name[4:])
    return RNNClassifier(features=input_shape[-1], num_classes=num_classes, cell=name)
