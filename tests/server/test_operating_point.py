"""The two-class decision cut: chosen on the validation split, applied to the test split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.data import Samples
from common.metrics import at_cut, youden_cut
from server.operating_point import operating_point


class Biased(nn.Module):
    """P(class 1) = sigmoid(4 x + 6): ranks by x, but argmax calls almost everything class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 4 * x.reshape(len(x), -1)[:, :1] + 6
        return torch.cat([torch.zeros_like(score), score], dim=1)


def _split(rng: np.random.Generator, n: int, positive_share: float) -> Samples:
    y = (rng.random(n) < positive_share).astype(np.int64)
    x = (rng.normal(size=n) + 2.0 * y - 1.0).astype(np.float32)[:, None]
    return Samples(x, y)


def test_the_cut_comes_from_validation_and_beats_argmax_on_test():
    rng = np.random.default_rng(0)
    validation, test = _split(rng, 400, 0.7), _split(rng, 400, 0.4)  # another class mix on test
    point = operating_point(Biased(), validation, test, torch.device("cpu"))
    assert point is not None
    p_validation = torch.sigmoid(4 * torch.from_numpy(validation.x[:, 0]) + 6).numpy()
    assert point["cut"] == youden_cut(validation.y, p_validation)
    argmax = at_cut(test.y, torch.sigmoid(4 * torch.from_numpy(test.x[:, 0]) + 6).numpy(), 0.5)
    assert point["test"]["balanced_accuracy"] > argmax["balanced_accuracy"] + 0.1
    assert point["test"]["accuracy"] > argmax["accuracy"] + 0.1
    flipped = Samples(test.x, 1 - test.y)  # the test labels choose nothing
    assert operating_point(Biased(), validation, flipped, torch.device("cpu"))["cut"] == point["cut"]


def test_no_cut_from_a_validation_split_with_one_class():
    rng = np.random.default_rng(1)
    one_class = Samples(rng.normal(size=(20, 1)).astype(np.float32), np.ones(20, dtype=np.int64))
    assert operating_point(Biased(), one_class, _split(rng, 50, 0.5), torch.device("cpu")) is None


def test_at_cut_counts_sensitivity_and_specificity():
    y = np.array([1, 1, 1, 0, 0])
    scores = at_cut(y, np.array([0.9, 0.8, 0.2, 0.7, 0.1]), 0.5)
    assert scores["sensitivity"] == 2 / 3 and scores["specificity"] == 1 / 2 and scores["accuracy"] == 3 / 5
