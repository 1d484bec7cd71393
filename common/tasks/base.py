"""What defines one learning problem: the Task dataclass every task folder fills."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass

import torch
from torch import nn

from common.config import RunConfig
from common.data import Samples, TaskData
from common.privacy import DPState
from common.training import TrainOutcome, evaluate_classifier, fit_classifier

Loader = Callable[[str, RunConfig], TaskData]
ModelFactory = Callable[[tuple[int, ...], int, RunConfig], nn.Module]
Trainer = Callable[
    [nn.Module, Samples, int, RunConfig, "DPState | None", torch.device, int], TrainOutcome
]
Evaluator = Callable[[nn.Module, Samples, torch.device], dict[str, float]]
Finisher = Callable[[nn.Module, "TaskData | None", RunConfig, Path, torch.device], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """One medical learning problem.

    `load` reads a data path (naming the bad file on failure), `build_model` makes
    the Opacus-ready model for an input shape and class count, `train` runs one
    hospital's local round, `evaluate` gives loss and metrics on held-out samples.
    A task's reader scales features record by record with public constants (never
    with statistics of the data, which would couple records under DP).
    `finish` runs on the server after the last round (e.g. the GAN's samples and
    train-on-synthetic score). A run setting left at 0 means "the task's default":
    lr -> `default_lr`, or `default_dp_lr` under DP (clipped, noisy gradients want a
    larger step); batch-size -> `default_batch_size`, or `default_dp_batch_size` under
    DP (a larger expected batch shrinks the noise relative to the signal);
    max-grad-norm -> `default_max_grad_norm`; num-server-rounds -> `default_rounds`, or
    `default_dp_rounds` under DP where set (the noise is calibrated to every planned step); an
    empty model -> `default_model` (so the card names the model that trained).
    """

    name: str
    load: Loader
    build_model: ModelFactory
    train: Trainer = fit_classifier
    evaluate: Evaluator = evaluate_classifier
    finish: Finisher | None = None
    default_lr: float = 0.01
    default_dp_lr: float = 0.1
    default_rounds: int = 3
    default_dp_rounds: int = 0  # under DP (0: default_rounds)
    default_batch_size: int = 32
    default_dp_batch_size: int = 32
    default_max_grad_norm: float = 1.0
    default_model: str = ""
    # without DP, what min-local-steps=-1 means: each hospital trains at least this many optimiser steps a
    # round (whole epochs; common/training.py `local_epochs`); 0: local-epochs as set
    min_local_steps: int = 0
    classifier: bool = True
    # under DP with the class histogram released (balanced-decision=true): each hospital weights its
    # training by class (common/class_prior.py `training_weights`, applied after clipping)
    balanced_training: bool = False
    # what balanced-tau=0 means: the balanced decision rule's tau (common/class_prior.py `adjust`)
    balanced_tau: float = 1.0
    # without DP, what run setting class-weighting=auto means: inverse-frequency class weights in the loss
    class_weighting: bool = True
    # with strategy fedavg and no central DP, what server-momentum=-1 means (0: plain FedAvg; > 0: FedAvgM),
    # without DP and under DP (there post-processing of the hospitals' noised updates: free in privacy)
    server_momentum: float = 0.0
    dp_server_momentum: float = 0.0
    # what lr-schedule=auto means, without DP and under DP (common/schedule.py: constant or cosine over rounds)
    lr_schedule: str = "constant"
    dp_lr_schedule: str = "constant"
