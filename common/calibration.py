"""Adapt a global classifier to one hospital's label prior (Saerens et al., 2002).

Sites differ in how common each diagnosis is (UCI heart disease: 98% positive in
Switzerland, 46% in Cleveland). A hospital shifts the global model's logits by
log(local prior) - log(mean predicted probability on its own train split). Only
the hospital's own labels are used, at the hospital; nothing about them is sent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.data import Samples
from common.training import predict_proba


class PriorShift(nn.Module):
    def __init__(self, model: nn.Module, offset: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.offset


def prior_corrected(model: nn.Module, train: Samples, num_classes: int, device: torch.device) -> nn.Module:
    predicted = predict_proba(model, train.x, device).mean(axis=0)
    local = np.bincount(train.y, minlength=num_classes) / max(len(train), 1)
    offset = np.log(np.clip(local, 1e-3, 1.0)) - np.log(np.clip(predicted, 1e-3, 1.0))
    return PriorShift(model, torch.tensor(offset, dtype=torch.float32, device=device))
