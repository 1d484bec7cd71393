"""Adapt a global classifier to one hospital's label prior (Saerens et al., 2002), honestly.

Sites differ in how common each diagnosis is (UCI heart disease: 98% positive in
Switzerland, 46% in Cleveland). The global model's output is shifted by
log(local prior) - log(mean predicted probability), per class.

Both terms are estimated on the hospital's held-out split only, cross-fitted:
the held-out records are dealt into two folds, and each fold is scored with the
shift estimated on the other fold, so no record's own label moves its own score.
Nothing from the training split is used: a shift computed there (as fedward
once did) let a server-chosen model read membership of a training record from
the evaluation loss. Evaluation only ever touches the held-out split, which the
hospital fixes (client/hospital.py).
"""

from __future__ import annotations

import numpy as np

FOLDS = 2


def cross_fitted(proba: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """`proba` (N, C) of the held-out records, each fold shifted to the other fold's prior.

    Fewer than two records per fold: returned unchanged (nothing to estimate from)."""
    if len(y) < 2 * FOLDS:
        return proba
    fold = np.arange(len(y)) % FOLDS  # the held-out split is already a shuffled draw
    out = np.empty_like(proba)
    for k in range(FOLDS):
        mine, other = fold == k, fold != k
        local = np.bincount(y[other], minlength=num_classes) / other.sum()
        predicted = proba[other].mean(axis=0)
        offset = np.log(np.clip(local, 1e-3, 1.0)) - np.log(np.clip(predicted, 1e-3, 1.0))
        logits = np.log(np.clip(proba[mine], 1e-12, 1.0)) + offset
        logits -= logits.max(axis=1, keepdims=True)
        shifted = np.exp(logits)
        out[mine] = shifted / shifted.sum(axis=1, keepdims=True)
    return out
