"""Classification metrics that clinicians read: accuracy, AUROC, macro-F1, recall."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score, roc_curve


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, ranking: np.ndarray | None = None) -> dict[str, float]:
    """Metrics from true labels and predicted class probabilities (N, C).

    `ranking`: the scores AUROC ranks, where `proba` was prior-corrected record by record
    (common/calibration.py): a correction that leaves each record out shifts its own class
    down, which only decisions should see; ranked, it drove a weak model's AUROC to 0.15.

    Balanced accuracy (mean recall over the classes present) and AUROC lead: on
    label-skewed data plain accuracy flatters a model that always answers the common
    class, so `majority-baseline` (the accuracy of always answering these labels' most
    common class) stands beside it. AUROC is one-vs-rest, macro over the classes the
    labels hold (a natural split's held-out set often lacks a rare class), and NaN where
    it is undefined (a held-out set with a single class).
    """
    if len(y_true) == 0:
        return {"balanced-accuracy": math.nan, "auroc": math.nan, "accuracy": math.nan,
                "majority-baseline": math.nan, "macro-f1": math.nan}
    num_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    labels = list(range(num_classes))
    return {
        "balanced-accuracy": float(recall_score(y_true, pred, labels=np.unique(y_true), average="macro",
                                                zero_division=0)),
        "auroc": auroc(y_true, proba if ranking is None else ranking),
        "accuracy": float((pred == y_true).mean()),
        "majority-baseline": float(np.bincount(y_true).max() / len(y_true)),
        "macro-f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
    }


def per_class_recall(y_true: np.ndarray, proba: np.ndarray) -> list[float]:
    labels = list(range(proba.shape[1]))
    recall = recall_score(y_true, proba.argmax(axis=1), labels=labels, average=None, zero_division=0)
    return [float(r) for r in recall]


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) < 2 or not np.isfinite(proba).all():
        return math.nan
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    # one-vs-rest, macro over the classes these labels hold (sklearn's "ovr" macro where all are
    # present); a class absent from a hospital's held-out split has no AUROC of its own
    return float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present]))


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most common class."""
    if len(y_test) == 0:
        return math.nan
    majority = np.bincount(y_train).argmax()
    return float((y_test == majority).mean())


def youden_cut(y_true: np.ndarray, p_positive: np.ndarray) -> float:
    """The cut on P(class 1) with the largest sensitivity + specificity (Youden's J), i.e.
    the best balanced accuracy, on these labels."""
    if len(np.unique(y_true)) < 2:
        return math.nan
    fpr, tpr, thresholds = roc_curve(y_true, p_positive)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def at_cut(y_true: np.ndarray, p_positive: np.ndarray, cut: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity and specificity calling class 1 at P >= cut."""
    pred = (p_positive >= cut).astype(np.int64)
    positive, negative = y_true == 1, y_true == 0
    return {
        "accuracy": float((pred == y_true).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "sensitivity": float(pred[positive].mean()) if positive.any() else math.nan,
        "specificity": float(1 - pred[negative].mean()) if negative.any() else math.nan,
    }
