"""The DP class prior: one unit (record or patient) moves the released histogram by at most 1 in L2,
the noise the accountant is told of; and the calibration counts the release with the steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from common.class_prior import HISTOGRAM_NOISE, adjust, global_prior, histogram_entry, reliable, unit_histogram
from common.privacy import calibrate_noise

CLASSES = 4


@st.composite
def labelled(draw, patients: bool):  # type: ignore[no-untyped-def]
    n = draw(st.integers(2, 40))
    y = np.array(draw(st.lists(st.integers(0, CLASSES - 1), min_size=n, max_size=n)))
    owners = np.array([f"p{v}" for v in draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))]) if patients else None
    return y, owners


@settings(max_examples=200, deadline=None)
@given(labelled(patients=False), st.data())
def test_one_record_moves_the_released_histogram_by_at_most_1(data, choice):
    y, _ = data
    gone = choice.draw(st.integers(0, len(y) - 1))
    neighbour = np.delete(y, gone)
    moved = unit_histogram(y, CLASSES) - unit_histogram(neighbour, CLASSES)
    assert np.linalg.norm(moved) <= 1 + 1e-12


@settings(max_examples=200, deadline=None)
@given(labelled(patients=True), st.data())
def test_one_patient_moves_the_released_histogram_by_at_most_1(data, choice):
    """A patient with many records still moves it by <= 1: it adds its class fractions, not its counts."""
    y, owners = data
    patient = choice.draw(st.sampled_from(sorted(set(owners))))
    keep = owners != patient
    with_patient = unit_histogram(y, CLASSES, owners)
    without = unit_histogram(y[keep], CLASSES, owners[keep]) if keep.any() else np.zeros(CLASSES)
    assert np.linalg.norm(with_patient - without) <= 1 + 1e-12
    many = np.concatenate([y, np.full(50, 2)])  # the patient also gains 50 records of one class
    grown = unit_histogram(many, CLASSES, np.concatenate([owners, np.full(50, patient)]))
    assert np.linalg.norm(grown - without) <= 1 + 1e-12


@pytest.mark.parametrize("sample_rate, steps", [(1 / 60, 600), (1 / 4, 30)])
def test_histogram_and_steps_together_spend_exactly_the_target(sample_rate: float, steps: int):
    """Opacus's RDP accountant, fed the histogram entry then the planned steps at the calibrated
    noise, gives the run's epsilon (within Opacus's own calibration tolerance, never above)."""
    noise = calibrate_noise(3.0, 1e-5, sample_rate, steps, (histogram_entry(),))
    accountant = RDPAccountant()
    accountant.history = [(HISTOGRAM_NOISE, 1.0, 1), (noise, sample_rate, steps)]
    assert 3.0 - 0.005 <= accountant.get_epsilon(1e-5) <= 3.0
    assert noise > calibrate_noise(3.0, 1e-5, sample_rate, steps), "the release is paid for with more noise"


def test_the_balanced_rule_turns_the_skewed_prior_back():
    """A model that learned a 90/10 prior calls a 0.3 probability of the rare class rare."""
    prior = global_prior([np.array([900.0, 100.0]), np.array([-30.0, 0.0])])
    assert prior[1] == pytest.approx(100 / 970)
    proba = np.array([[0.7, 0.3], [0.95, 0.05]])
    assert adjust(proba, prior).argmax(axis=1).tolist() == [1, 0]
    assert global_prior([np.array([5.0, -20.0])])[1] > 0, "a noisy negative count gets the floor"


def test_a_class_the_noise_could_hide_is_not_called_wherever_the_model_is_unsure():
    """MIT-BIH's Q: 8 of ~11,700 training beats, released by 5 hospitals under noise 10 per class. Its summed
    count is indistinguishable from 0, so its prior must not be: the rule (tau 1.5, the ECG default) divides
    by it, and a model that never learned the class (p_Q ~ 0.001 on every beat) would be told to call Q on
    beats it is not sure of. A class the release confirms (S, ~900 units) is still boosted."""
    rng = np.random.default_rng(0)
    true = np.array([6600.0, 944.0, 3788.0, 414.0, 8.0]) / 5
    histograms = [true + rng.normal(0.0, HISTOGRAM_NOISE, 5) for _ in range(5)]
    prior = global_prior(histograms)
    hidden = 2.0 * HISTOGRAM_NOISE * np.sqrt(5) / float(np.clip(np.sum(histograms, axis=0), 0, None).sum())
    assert prior[4] >= hidden * 0.99, "Q gets at least the share the noise could hide"
    unsure = np.array([[0.55, 0.30, 0.10, 0.049, 0.001],   # a normal beat the model half-doubts
                       [0.40, 0.10, 0.45, 0.049, 0.001]])  # N or V
    assert 4 not in adjust(unsure, prior, 1.5).argmax(axis=1), "no Q call the model does not support"
    s_beat = np.array([[0.75, 0.2, 0.03, 0.019, 0.001]])
    assert adjust(s_beat, prior, 1.5).argmax(axis=1).tolist() == [1], "the confirmed rare class S is still boosted"
    assert prior[1] == pytest.approx(np.clip(np.sum(histograms, axis=0), 0, None)[1]
                                     / np.clip(np.sum(histograms, axis=0), 0, None).sum(), rel=0.02)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.001, 0.999), min_size=1, max_size=30), st.floats(0.01, 0.49),
       st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_a_larger_tau_calls_the_rare_class_wherever_a_smaller_one_did(p_rare, rare_prior, tau_a, tau_b):
    """balanced-tau: tau 0 is the argmax, tau 1 the Bayes rule for the balanced error, and raising tau
    only adds calls of the rarer class (what a task's tau chosen on validation data trades)."""
    proba = np.column_stack([1 - np.array(p_rare), p_rare])
    prior = np.array([1 - rare_prior, rare_prior])
    low, high = sorted((tau_a, tau_b))
    called = {tau: adjust(proba, prior, tau).argmax(axis=1) == 1 for tau in (low, high)}
    assert not (called[low] & ~called[high]).any()
    assert (adjust(proba, prior, 0.0).argmax(axis=1) == proba.argmax(axis=1)).all()
    assert np.allclose(adjust(proba, prior, 1.0), adjust(proba, prior))


def test_a_prior_of_a_few_patients_is_not_relied_on_and_one_of_hundreds_of_records_is():
    """Under patient-level DP two hospitals of two patients release class fractions summing to ~4 units
    under noise of 10 per class: the rule would chase the noise. 2 x 110 records is enough."""
    rng = np.random.default_rng(0)
    few = [unit_histogram(np.array([0, 0, 1, 2]), CLASSES, np.array(["a", "a", "b", "b"]))
           + rng.normal(0, HISTOGRAM_NOISE, CLASSES) for _ in range(2)]
    assert not reliable(few)
    many = [unit_histogram(rng.integers(0, CLASSES, 110), CLASSES) + rng.normal(0, HISTOGRAM_NOISE, CLASSES)
            for _ in range(2)]
    assert reliable(many)
    assert not reliable([])


def test_training_weights_bring_a_common_class_down_to_an_even_share_and_never_exceed_1():
    from common.class_prior import trained_histogram, training_weights

    counts = np.array([5600.0, 800.0, 3200.0, 350.0, 10.0])  # MIT-BIH DS1's mix
    weights = training_weights(counts)
    assert np.allclose(weights, [0.2 / 0.5622, 1, 0.2 / 0.3213, 1, 1], atol=1e-3)
    seen = trained_histogram(counts, weights)
    assert np.allclose(seen[[0, 2]] / seen.sum(), seen[0] / seen.sum()), "N and V weigh alike after weighting"
    for noisy in (np.array([-12.0, 3.0, 40.0]), np.zeros(3), np.array([1e6, -1e6, 5.0])):
        w = training_weights(noisy)  # a noisy release may hold negative counts
        assert np.isfinite(w).all() and (w > 0).all() and (w <= 1).all()
