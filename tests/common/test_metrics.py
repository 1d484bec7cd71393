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


def test_multiclass_auroc_averages_the_classes_a_held_out_split_holds():
    """A hospital's held-out beats often hold no F or Q beat: AUROC is still reported (macro over
    the classes present, one-vs-rest), not n/a; with every class present it is sklearn's ovr macro."""
    from sklearn.metrics import roc_auc_score

    from common.metrics import auroc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    proba = rng.dirichlet(np.ones(5), 300) + 0.5 * np.eye(5)[y]
    proba /= proba.sum(axis=1, keepdims=True)
    assert auroc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    some = y < 3  # classes 3 and 4 absent
    expected = np.mean([roc_auc_score(y[some] == c, proba[some, c]) for c in range(3)])
    assert auroc(y[some], proba[some]) == pytest.approx(expected) and expected > 0.6
