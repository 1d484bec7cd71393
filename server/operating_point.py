"""The model's decisions as the server scores them: a two-class cut chosen on the central
validation split, and the balanced rule on the hospitals' DP class prior.

A DP model often ranks cases well (high AUROC) while its argmax calls nearly
everything one class; clinicians pick an operating point instead. The cut on
P(class 1) with the best balanced accuracy (Youden's J) on the validation split
is applied unchanged to the central test split; the test split chooses nothing.

Under DP, where hospitals released their noisy class histograms (common/class_prior.py),
the server's decisions (its per-round central evaluation, the model card) are by the
balanced rule: argmax_c log p_c - tau log prior_c on the summed prior (tau: run setting
balanced-tau, the task's default where 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from torch import nn

from common.class_prior import (
    FLOOR, HISTOGRAM_NOISE, RULE, UNCONFIRMED_SD, adjust, global_prior, per_class, summed_histogram, trained_histogram,
)
from common.data import Samples
from common.metrics import at_cut, youden_cut
from common.training import predict_proba, scores_of
from server.screening import hospital_of


def operating_point(
    model: nn.Module, validation: Samples, test: Samples, device: torch.device,
) -> dict[str, Any] | None:
    """The model card's `operating_point`, or None where the validation split has one class."""
    p_validation = predict_proba(model, validation.x, device)[:, 1]
    cut = youden_cut(validation.y, p_validation)
    if math.isnan(cut):
        return None
    p_test = predict_proba(model, test.x, device)[:, 1]
    return {
        "rule": "Youden's J on the central validation split (best balanced accuracy), applied to the test split",
        "cut": cut,
        "validation": at_cut(validation.y, p_validation, cut),
        "test": at_cut(test.y, p_test, cut),
    }


def received_priors(replies: list[Message], num_classes: int) -> dict[str, np.ndarray]:
    """Each hospital's noisy class histogram (`class-prior` of its train reply), by hospital name, as
    its training saw it (times its `training-weights` where it sent them); one of the wrong length,
    not finite, or with weights outside [0, 1] is left out."""
    priors: dict[str, np.ndarray] = {}
    for msg in replies:
        if msg.has_error() or "class-prior" not in msg.content.config_records:
            continue
        record = msg.content.config_records["class-prior"]
        counts, weights = record.get("counts"), record.get("training-weights")
        values = np.asarray(counts if isinstance(counts, list) else [], dtype=np.float64)
        if values.shape != (num_classes,) or not np.isfinite(values).all():
            continue
        if weights is not None:  # the hospital trained class-weighted: the rule divides by what it saw
            seen = np.asarray(weights if isinstance(weights, list) else [], dtype=np.float64)
            if seen.shape != (num_classes,) or not np.isfinite(seen).all() or (seen < 0).any() or (seen > 1).any():
                continue
            values = trained_histogram(values, seen)
        priors[hospital_of(msg)] = values
    return priors


def balanced_scores(
    model: nn.Module, test: Samples, prior: np.ndarray | None, device: torch.device, tau: float = 1.0,
) -> dict[str, float]:
    """Loss and common.metrics of the model's decisions on `test`: by the balanced rule on `prior`
    (common/class_prior.py `adjust`, its tau), or by argmax where there is no prior."""
    proba = predict_proba(model, test.x, device)
    return scores_of(test.y, adjust(proba, prior, tau) if prior is not None else proba)


def prior_section(
    model: nn.Module, priors: dict[str, np.ndarray], test: Samples | None, device: torch.device, tau: float = 1.0,
) -> dict[str, Any]:
    """The model card's `class_prior`: the global prior, where it came from, the rule, and (where the
    server holds a test split) each class's recall and positive predictivity by argmax and by the rule."""
    prior = global_prior(list(priors.values()))
    section: dict[str, Any] = {
        "prior": [float(p) for p in prior], "hospitals": sorted(priors), "rule": RULE, "tau": tau,
        "summed": [float(u) for u in summed_histogram(list(priors.values()))],
        "release": f"each hospital's training class histogram + N(0, {HISTOGRAM_NOISE:g}^2) per class, once per "
                   f"run, charged in its DP account; a hospital that trained class-weighted on it (sequence-rnn) "
                   f"counts as its histogram times its training-weights; summed (negative counts as 0), each "
                   f"class's share at least {FLOOR:g} and at least {UNCONFIRMED_SD:g} standard deviations of its "
                   f"summed noise over the total (a class the noise could hide is not boosted beyond that)",
    }
    if test is not None and len(test):
        proba = predict_proba(model, test.x, device)
        section["test"] = {"argmax": per_class(test.y, proba),
                           "balanced": per_class(test.y, adjust(proba, prior, tau))}
    return section
