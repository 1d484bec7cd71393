"""The prior correction of an evaluation is estimated on the held-out split, leaving each record out."""

import numpy as np

from common.calibration import cross_fitted


def test_no_records_own_label_moves_its_own_score():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([1, 1, 1], size=40)
    labels = rng.integers(0, 3, 40)
    base = cross_fitted(proba, labels, 3)
    for i in range(40):
        flipped = labels.copy()
        flipped[i] = (labels[i] + 1) % 3
        assert np.allclose(cross_fitted(proba, flipped, 3)[i], base[i])


def test_a_skewed_hospital_gets_its_prior_back():
    """A model that says 50:50 everywhere, at a hospital where 80% have the disease, is shifted towards it."""
    proba = np.full((50, 2), 0.5)
    labels = np.array([1] * 40 + [0] * 10)
    shifted = cross_fitted(proba, labels, 2)
    assert np.all(shifted[:, 1] > 0.7)
