"""Adapt a global classifier to one hospital's label prior (Saerens et al., 2002), honestly.

Sites differ in how common each diagnosis is (UCI heart disease: 98% positive in
Switzerland, 46% in Cleveland). The global model's output is shifted by
log(local prior) - log(mean predicted probability), per class.

Both terms are estimated on the hospital's held-out split only, leaving one out:
each held-out record is scored with the shift estimated on all the other held-out
records, so no record's own label moves its own score, and nothing from the
training split is used: a shift computed there (as fedward once did) let a
server-chosen model read membership of a training record from the evaluation
loss. Evaluation only ever touches the held-out split, which the hospital fixes
(client/hospital.py).
"""

from __future__ import annotations

import numpy as np

def cross_fitted(proba: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """`proba` (N, C) of the held-out records, each shifted by the prior of the other N - 1.

    Fewer than 4 records: returned unchanged (nothing to estimate from)."""
    n = len(y)
    if n < 4:
        return proba
    onehot = np.eye(num_classes)[y]
    local = (onehot.sum(axis=0) - onehot) / (n - 1)  # each row: the others' label prior
    predicted = (proba.sum(axis=0) - proba) / (n - 1)  # each row: the others' mean prediction
    offset = np.log(np.clip(local, 1e-3, 1.0)) - np.log(np.clip(predicted, 1e-3, 1.0))
    logits = np.log(np.clip(proba, 1e-12, 1.0)) + offset
    logits -= logits.max(axis=1, keepdims=True)
    shifted = np.exp(logits)
    return shifted / shifted.sum(axis=1, keepdims=True)
