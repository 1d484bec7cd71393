"""Local training and evaluation of a classifier, with or without DP-SGD.

One place for what every classifier task does: a class-weighted loss (a
weighted sampler would break the DP accounting), Poisson batches under DP, the
FedProx pull towards the round's global weights, and evaluation into the
metrics of common.metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import RunConfig
from common.data import Samples
from common.metrics import classification_metrics
from common.privacy import DPState, end_private, make_private


@dataclass(frozen=True)
class TrainOutcome:
    num_examples: int
    loss: float
    steps: int


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches per epoch; under DP, 1 / this is the sample rate Opacus accounts with."""
    return max(1, math.ceil(num_samples / batch_size))


def planned_steps(num_samples: int, config: RunConfig) -> int:
    """Optimiser steps a hospital takes over the whole run."""
    per_round = config.local_epochs * batches_per_epoch(num_samples, config.batch_size)
    return config.num_server_rounds * per_round


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes present."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def make_loader(data: Samples, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class ProximalPull:
    """FedProx: after each step, move weights towards the round's global ones.

    Applied after the (noisy) optimiser step, so under DP it is post-processing of
    data-independent values and costs no privacy; adding the term to the loss would
    be silently dropped by Opacus's per-sample gradients.
    """

    def __init__(self, module: nn.Module, mu: float, lr: float) -> None:
        self.factor = mu * lr
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.factor > 0:
            for p, p0 in zip(self.params, self.anchor, strict=True):
                p.sub_(self.factor * (p - p0))


def fit_classifier(
    model: nn.Module,
    data: Samples,
    num_classes: int,
    config: RunConfig,
    dp: DPState | None,
    device: torch.device,
    round_seed: int,
    grad_sample_mode: str = "hooks",
) -> TrainOutcome:
    """Train `model` in place on `data` for the configured local epochs (under DP,
    per-sample gradients by Opacus's `grad_sample_mode`)."""
    torch.manual_seed(round_seed)
    model.to(device).train()
    weight = class_weights(data.y, num_classes).to(device) if config.class_weighting else None
    criterion = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    loader = make_loader(data, config.batch_size, round_seed)
    prox = ProximalPull(model, config.proximal_mu if config.strategy == "fedprox" else 0.0, config.lr)
    trainable: nn.Module = model
    if dp is not None:
        trainable, optimizer, loader, engine = make_private(model, optimizer, loader, dp, grad_sample_mode)
    total, steps, seen = 0.0, 0, 0
    for _ in range(config.local_epochs):
        for x, y in loader:
            if len(y) == 0:  # Poisson sampling can draw an empty batch
                continue
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(trainable(x), y)
            loss.backward()
            optimizer.step()
            prox()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            steps += 1
    if dp is not None:
        end_private(trainable)
        dp.history = [tuple(h) for h in engine.accountant.history]
    return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=steps)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    model.to(device).eval()
    out = []
    for start in range(0, len(x), 512):
        batch = torch.from_numpy(x[start : start + 512]).to(device)
        out.append(torch.softmax(model(batch), dim=1).cpu())
    if not out:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(out).numpy()


def evaluate_classifier(model: nn.Module, data: Samples, device: torch.device) -> dict[str, float]:
    """Loss (unweighted cross-entropy) and the metrics of common.metrics."""
    return scores_of(data.y, predict_proba(model, data.x, device))


def scores_of(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Loss (unweighted cross-entropy) and the metrics of common.metrics for given probabilities."""
    if len(y) == 0:
        return {"loss": math.nan, **classification_metrics(y, proba)}
    picked = proba[np.arange(len(y)), y]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())
    return {"loss": loss, **classification_metrics(y, proba)}
