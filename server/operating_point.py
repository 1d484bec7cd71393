"""The decision cut for a two-class model, chosen on the central validation split.

A DP model often ranks cases well (high AUROC) while its argmax calls nearly
everything one class; clinicians pick an operating point instead. The cut on
P(class 1) with the best balanced accuracy (Youden's J) on the validation split
is applied unchanged to the central test split; the test split chooses nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from common.data import Samples
from common.metrics import at_cut, youden_cut
from common.training import predict_proba


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
