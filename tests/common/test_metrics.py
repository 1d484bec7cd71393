"""The headline a clinician reads: a model that always answers the common class must look like one."""

import numpy as np
import pytest

from common.metrics import classification_metrics


def test_always_answering_the_common_class_scores_half_balanced_accuracy_and_equals_the_baseline():
    y = np.array([1] * 62 + [0] * 38)  # a test split that is 62% pneumonia
    always_pneumonia = np.tile([0.2, 0.8], (100, 1))
    scores = classification_metrics(y, always_pneumonia)
    assert scores["accuracy"] == pytest.approx(0.62)
    assert scores["majority-baseline"] == pytest.approx(0.62)
    assert scores["balanced-accuracy"] == pytest.approx(0.5)
    assert list(scores)[:2] == ["balanced-accuracy", "auroc"], "summaries lead with these"


def test_balanced_accuracy_is_the_mean_recall_over_the_classes_present():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    proba = np.eye(4)[pred]  # a fourth class that never occurs is not averaged in
    scores = classification_metrics(y, proba)
    assert scores["balanced-accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
