"""Local training and evaluation of a classifier, with or without DP-SGD.

One place for what every classifier task does: Poisson batches of privacy units under
DP, the FedProx pull towards the round's global weights, and evaluation into the
metrics of common.metrics.

Under DP each unit's clipped gradient must depend on that unit alone, or Opacus's noise
(calibrated to one unit moving the clipped sum by at most C) protects nothing:
- the loss is the sum of per-record losses with weight 1; Opacus clips each unit's
  gradient, sums, adds noise and divides by the *expected* batch size. No class weights
  (they came from every private label) and no division by the realised batch size or
  its total weight (which made each record's gradient depend on the others);
- the privacy unit is the patient where the data names patients (`Samples.patients`):
  user-level DP-SGD (McMahan et al. 2018). A step Poisson-samples patients, takes at
  most `records-per-patient` of each sampled patient's records, and the patient's
  gradient, the mean of those records' per-sample gradients, is what is clipped; the
  accountant's sample rate is the patient sampling rate (`dp_plan`). Elsewhere the unit
  is the record;
- every planned step is taken, an empty batch included (the step is then noise only):
  skipping it would spend less noise than accounted and the step count would tell the
  server how many batches were empty.
Without DP, class weights (inverse frequency) may balance the loss as before.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.config import RunConfig
from common.data import Samples
from common.metrics import classification_metrics
from common.per_sample import dense
from common.privacy import DPState, end_private, factored_clipping, make_private

PATIENT, RECORD = "patient", "record"


@dataclass(frozen=True)
class TrainOutcome:
    num_examples: int
    loss: float
    steps: int  # the planned steps of the round (under DP every one is taken)


@dataclass(frozen=True)
class DPPlan:
    """What a hospital's DP account needs about its training split, before any training.

    `unit`: what one guarantee protects ("patient" where the data names patients, else
    "record"); `units`: how many of them the training split holds; `sample_rate`: the
    Poisson rate at which a step samples units, Opacus's 1 / batches per epoch, the rate
    the accountant must be given; `steps_per_round` and `planned_steps` (the whole run).
    """

    unit: str
    units: int
    sample_rate: float
    steps_per_round: int
    planned_steps: int


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches per epoch; under DP, 1 / this is the sample rate Opacus accounts with."""
    return max(1, math.ceil(num_samples / batch_size))


def local_epochs(num_samples: int, config: RunConfig) -> int:
    """Epochs a hospital with `num_samples` training units trains each round: `local-epochs`, or
    without DP more whole epochs where that gives fewer than `min-local-steps` optimiser steps."""
    config = _with_task_defaults(config)
    if config.dp or config.min_local_steps <= 0:
        return config.local_epochs
    return max(config.local_epochs, math.ceil(config.min_local_steps / batches_per_epoch(num_samples, config.batch_size)))


def _with_task_defaults(config: RunConfig) -> RunConfig:
    """Settings left at 0 ("the task's default") filled in: every plan and step sees resolved values."""
    from common.tasks import resolve  # lazy: the task registry imports this module

    return resolve(config)


def planned_steps(num_samples: int, config: RunConfig) -> int:
    """Optimiser steps a hospital takes over the whole run, `num_samples` units at `batch-size` units a batch."""
    config = _with_task_defaults(config)
    per_round = local_epochs(num_samples, config) * batches_per_epoch(num_samples, config.batch_size)
    return config.num_server_rounds * per_round


def privacy_unit(data: Samples) -> str:
    """"patient" where the data names each sample's patient, else "record"."""
    return RECORD if data.patients is None else PATIENT


def dp_plan(data: Samples, config: RunConfig) -> DPPlan:
    """The privacy unit, sample rate and planned steps of DP training on `data` (a training split):
    `batch-size` counts units (patients or records)."""
    config = _with_task_defaults(config)
    unit = privacy_unit(data)
    units = len(data) if data.patients is None else len(np.unique(data.patients))
    per_epoch = batches_per_epoch(units, config.batch_size)
    per_round = config.local_epochs * per_epoch
    return DPPlan(unit, units, 1.0 / per_epoch, per_round, config.num_server_rounds * per_round)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes present (training without DP only)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def make_loader(data: Samples, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class PrivateBatches:
    """Batches of privacy units for DP-SGD: Opacus's Poisson loader draws unit indices, and
    `records` gives the samples of the drawn units with each sample's owner (its position in
    the batch). A patient with more than `records-per-patient` samples contributes a random
    subset of that size, drawn from its own id and the step (not from other patients)."""

    def __init__(self, data: Samples, config: RunConfig, seed: int) -> None:
        self.data, self.seed, self.cap, self.step = data, seed, config.records_per_patient, 0
        self.plan = dp_plan(data, config)
        self.members: list[np.ndarray] | None = None
        self.ids: np.ndarray | None = None
        if data.patients is not None:
            self.ids, owner = np.unique(data.patients, return_inverse=True)
            order = np.argsort(owner, kind="stable")
            self.members = np.split(order, np.cumsum(np.bincount(owner, minlength=len(self.ids)))[:-1])

    def loader(self, batch_size: int) -> DataLoader:
        """Unit indices in batches; make_private turns it into Poisson sampling at rate 1 / len(loader)."""
        return DataLoader(TensorDataset(torch.arange(self.plan.units)), batch_size=batch_size)

    def records(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, labels and owners (0..len(units)-1) of the samples of `units`."""
        self.step += 1
        picked = units.numpy()
        if self.members is None:
            index, owner = picked, np.arange(len(picked))
        else:
            assert self.ids is not None
            chosen = [self._capped(self.members[u], str(self.ids[u])) for u in picked]
            index = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
            owner = np.repeat(np.arange(len(chosen)), [len(c) for c in chosen])
        return (torch.from_numpy(self.data.x[index]), torch.from_numpy(self.data.y[index]),
                torch.from_numpy(owner.astype(np.int64)))

    def _capped(self, members: np.ndarray, patient: str) -> np.ndarray:
        if len(members) <= self.cap:
            return members
        rng = np.random.default_rng([self.seed, self.step, zlib.crc32(patient.encode())])
        return np.sort(rng.choice(members, size=self.cap, replace=False))


def per_unit_gradients(params: list[nn.Parameter], owner: torch.Tensor, units: int) -> None:
    """Each unit's gradient (the mean of its samples' per-sample gradients) in place of the
    per-sample ones, for Opacus's optimiser to clip: one row per unit."""
    if units == len(owner) and bool((owner == torch.arange(units, device=owner.device)).all()):
        return  # one sample per unit: already per unit
    counts = torch.bincount(owner, minlength=units).clamp(min=1)
    for p in params:
        g = dense(p.grad_sample)
        summed = g.new_zeros((units, *g.shape[1:])).index_add_(0, owner.to(g.device), g)
        p.grad_sample = summed / counts.to(g.device).view(-1, *([1] * (g.dim() - 1)))


def unit_weights(record_weights: torch.Tensor, owner: torch.Tensor, units: int) -> torch.Tensor:
    """Each unit's weight: the mean of its records' class weights (each <= 1, so the mean is too)."""
    counts = torch.bincount(owner, minlength=units).clamp(min=1).to(record_weights.dtype)
    return record_weights.new_zeros(units).index_add_(0, owner, record_weights) / counts


def no_units(params: list[nn.Parameter]) -> None:
    """An empty Poisson batch: zero per-unit gradients, so the optimiser's step is noise alone
    (and the accountant counts it)."""
    for p in params:
        p.grad_sample = p.new_zeros((0, *p.shape))


def record_loss_sum_over(logits_loss: torch.Tensor) -> torch.Tensor:
    """Sum of per-record losses / realised batch size: Opacus (and fedward's layers mode) scale a
    mean-reduced loss's per-sample gradients by the realised batch size, so each record's
    per-sample gradient is then exactly its own loss's gradient; the optimiser divides the
    clipped, noised sum by the expected batch size."""
    return logits_loss.sum() / len(logits_loss)


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
    config = _with_task_defaults(config)
    torch.manual_seed(round_seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    prox = ProximalPull(model, config.proximal_mu if config.strategy == "fedprox" else 0.0, config.lr)
    if dp is not None:
        return _fit_private(model, data, config, dp, device, round_seed, grad_sample_mode, optimizer, prox)
    weight = class_weights(data.y, num_classes).to(device) if config.class_weighting == "true" else None
    criterion = nn.CrossEntropyLoss(weight=weight)
    total, steps, seen = 0.0, 0, 0
    loader = make_loader(data, config.batch_size, round_seed)
    for _ in range(local_epochs(len(data), config)):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            prox()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            steps += 1
    return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=steps)


def _fit_private(
    model: nn.Module, data: Samples, config: RunConfig, dp: DPState, device: torch.device, seed: int,
    mode: str, optimizer: torch.optim.Optimizer, prox: ProximalPull,
) -> TrainOutcome:
    batches = PrivateBatches(data, config, seed)
    trainable, optimizer, loader, engine = make_private(model, optimizer, batches.loader(config.batch_size), dp, mode)
    params = optimizer.params  # type: ignore[attr-defined]
    class_weights = None
    if dp.class_weights is not None:
        factored_clipping(optimizer)  # its clipping applies the unit weights
        class_weights = torch.tensor(dp.class_weights, dtype=torch.float32, device=device)
    total, seen = 0.0, 0
    for _ in range(config.local_epochs):
        for (units,) in loader:
            optimizer.zero_grad(set_to_none=True)
            if class_weights is not None:
                optimizer.unit_weights = None  # type: ignore[attr-defined]  # set again below for a non-empty batch
            if len(units) == 0:
                no_units(params)
            else:
                x, y, owner = (t.to(device) for t in batches.records(units))
                losses = F.cross_entropy(trainable(x), y, reduction="none")
                record_loss_sum_over(losses).backward()
                per_unit_gradients(params, owner, len(units))
                if class_weights is not None:
                    optimizer.unit_weights = unit_weights(class_weights[y], owner, len(units))  # type: ignore[attr-defined]
                total += float(losses.detach().sum())
                seen += len(y)
            optimizer.step()
            prox()
    end_private(trainable)
    dp.history = [tuple(h) for h in engine.accountant.history]
    return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=batches.plan.steps_per_round)


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


def scores_of(y: np.ndarray, proba: np.ndarray, ranking: np.ndarray | None = None) -> dict[str, float]:
    """Loss (unweighted cross-entropy) and the metrics of common.metrics for given probabilities
    (`ranking`: the uncorrected ones AUROC ranks, where `proba` is prior-corrected)."""
    if len(y) == 0:
        return {"loss": math.nan, **classification_metrics(y, proba, ranking)}
    picked = proba[np.arange(len(y)), y]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())
    return {"loss": loss, **classification_metrics(y, proba, ranking)}
