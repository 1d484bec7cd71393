"""A differentially private class prior, and the balanced decision rule built on it.

Under DP a classifier cannot weight classes by its raw labels (weights computed from
them would leak the label histogram and couple records), so it learns the skewed prior
and its argmax answers the common class. Post-hoc logit adjustment (Menon et al. 2021, "Long-tail
learning via logit adjustment") undoes that: predict argmax_c log p_c - log prior_c,
the Bayes rule for the balanced error. It needs the training prior, which is private.

So each hospital releases, once per run, its training split's class histogram with
Gaussian noise of standard deviation `HISTOGRAM_NOISE` (a Gaussian mechanism of L2
sensitivity 1):
- record level: one record changes one count by 1;
- where the data names patients: each patient adds its class *fractions* over its own
  records, a vector of L2 norm <= 1, so one patient changes the histogram by <= 1.
The release is one entry (HISTOGRAM_NOISE, 1.0, 1) of the run's RDP history, in the
same account as its DP-SGD steps (common/privacy.py `calibrate_noise` takes it into
the calibration, so histogram + steps spend exactly the run's epsilon). With
HISTOGRAM_NOISE = 10 it costs about 1% of an epsilon-3 budget: DP-SGD alone at the
calibrated noise would spend 2.97 of 3 (0.2-0.8% more DP-SGD noise).

The server sums the hospitals' noisy histograms into a global prior and applies `adjust`
to the model's probabilities wherever it scores decisions; no exact count ever leaves a
hospital. A class's share is floored at what UNCONFIRMED_SD standard deviations of its summed
noise would hold: a class the release cannot tell from absent (MIT-BIH's Q beats: 8 of 11,754
training beats) would otherwise get a prior near 0, and the rule, dividing by it, would call
that class wherever the model is unsure (1,500 false Q calls on DS2, docs/benchmarks.md).

Where the task trains balanced (`Task.balanced_training`) and the release holds at least
MIN_WEIGHTING_TOTAL units, each hospital also weights its DP training by `training_weights`
of its own released histogram (<= 1, applied after clipping: the sensitivity stays the
clip norm) and says so in its reply; the server then divides by the histogram the model
was trained on (`trained_histogram`).
"""

from __future__ import annotations

import math

import numpy as np

HISTOGRAM_NOISE = 10.0  # standard deviation per class of the released histogram (sensitivity 1)
FLOOR = 1e-3  # the smallest prior a class may get: a noisy count below it is clipped here
# class-weighted DP training only on a release of at least this noisy total (units): each share
# then has a standard deviation of at most HISTOGRAM_NOISE / MIN_WEIGHTING_TOTAL = 0.02
MIN_WEIGHTING_TOTAL = 500.0
MAX_NOISE_INCREASE = 0.05  # a hospital releases only where that raises its DP-SGD noise by <= 5%
LEDGER_ROUND = -1  # the round number a privacy ledger records the release under
# the server decides by the rule only where the summed noisy histogram totals at least this many standard
# deviations of one class's summed noise (HISTOGRAM_NOISE x sqrt(hospitals)); below, its shares are mostly noise
# (a few patients per hospital under patient-level DP) and the rule would chase it: decisions by argmax
MIN_PRIOR_SNR = 10.0
# each class's share is at least UNCONFIRMED_SD x (its summed noise's standard deviation) / the total: a count
# below that is indistinguishable from no such class, and the rule does not boost what the release cannot confirm
UNCONFIRMED_SD = 2.0
RULE = "post-hoc logit adjustment (Menon et al. 2021): argmax_c log p_c - tau log prior_c"


def histogram_entry() -> tuple[float, float, int]:
    """The release as an entry of Opacus's RDP history: a Gaussian mechanism, sampled with rate 1, once."""
    return (HISTOGRAM_NOISE, 1.0, 1)


def unit_histogram(y: np.ndarray, num_classes: int, patients: np.ndarray | None = None) -> np.ndarray:
    """The histogram before noise: counts of records, or the sum over patients of each
    patient's class fractions (one unit moves it by at most 1 in L2)."""
    y = np.asarray(y, dtype=np.int64)
    if patients is None:
        return np.bincount(y, minlength=num_classes).astype(np.float64)[:num_classes]
    _, owner = np.unique(patients, return_inverse=True)
    counts = np.zeros((int(owner.max()) + 1 if len(owner) else 0, num_classes))
    np.add.at(counts, (owner, y), 1.0)
    return (counts / counts.sum(axis=1, keepdims=True)).sum(axis=0)


def release(
    y: np.ndarray, num_classes: int, patients: np.ndarray | None, rng: np.random.Generator,
) -> np.ndarray:
    """The noisy histogram a hospital sends: `unit_histogram` plus N(0, HISTOGRAM_NOISE^2) per class."""
    return unit_histogram(y, num_classes, patients) + rng.normal(0.0, HISTOGRAM_NOISE, size=num_classes)


def prior_total(histograms: list[np.ndarray]) -> float:
    """The units the summed noisy histograms hold (negative classes counted as 0)."""
    return float(summed_histogram(histograms).sum())


def reliable(histograms: list[np.ndarray]) -> bool:
    """Whether the summed noisy histograms total at least MIN_PRIOR_SNR x their per-class noise."""
    return bool(histograms) and prior_total(histograms) >= MIN_PRIOR_SNR * HISTOGRAM_NOISE * math.sqrt(len(histograms))


def summed_histogram(histograms: list[np.ndarray]) -> np.ndarray:
    """The hospitals' noisy histograms summed, each class at least 0."""
    return np.clip(np.sum(np.asarray(histograms, dtype=np.float64), axis=0), 0.0, None)


def share_floor(total: float, hospitals: int, unconfirmed_sd: float = UNCONFIRMED_SD) -> float:
    """The smallest share `prior_of` gives a class: FLOOR, or the share `unconfirmed_sd` standard deviations
    of a class's summed noise (HISTOGRAM_NOISE x sqrt(hospitals)) hold of `total`, whichever is larger."""
    return max(FLOOR, unconfirmed_sd * HISTOGRAM_NOISE * math.sqrt(max(hospitals, 1)) / total)


def prior_of(summed: np.ndarray, hospitals: int, unconfirmed_sd: float = UNCONFIRMED_SD) -> np.ndarray:
    """The normalised prior of a summed histogram of `hospitals` releases: each class's share at least
    FLOOR and at least `unconfirmed_sd` x HISTOGRAM_NOISE x sqrt(hospitals) / the total (a class whose count
    the noise could hide is given the share that noise could hide)."""
    summed = np.asarray(summed, dtype=np.float64)
    total = summed.sum()
    if total <= 0:
        return np.full(len(summed), 1.0 / len(summed))
    prior = np.clip(summed / total, share_floor(total, hospitals, unconfirmed_sd), None)
    return prior / prior.sum()


def global_prior(histograms: list[np.ndarray]) -> np.ndarray:
    """The hospitals' noisy histograms summed and normalised (`prior_of`)."""
    return prior_of(summed_histogram(histograms), len(histograms))


def weights_from_release(counts: np.ndarray) -> np.ndarray | None:
    """`training_weights` of a released histogram, or None where it holds too few units for its
    noise (a noisy total below MIN_WEIGHTING_TOTAL): with 10 patients and noise 10 per class the
    shares, and so the weights, would be noise, often weighting a rare class down."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() < MIN_WEIGHTING_TOTAL:
        return None
    return training_weights(counts)


def training_weights(counts: np.ndarray) -> np.ndarray:
    """Each class's weight in a hospital's DP training, from its own noisy histogram (post-processing
    of the release, so free): min(1, (1/K) / share), the share floored at FLOOR. A class above an
    even share 1/K is weighted down to it, the rest keep weight 1, so every weight is <= 1: it
    multiplies a unit's gradient *after* clipping, and one unit still moves the sum by at most the
    clip norm (common/training.py). Without it a DP model spends its clipped, noisy steps on the
    common class and misses the rare ones (MIT-BIH S beats, docs/benchmarks.md)."""
    share = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = share.sum()
    share = share / total if total > 0 else np.full(len(share), 1.0 / len(share))
    return np.minimum(1.0, (1.0 / len(share)) / np.clip(share, FLOOR, None))


def trained_histogram(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The class histogram a model trained with `weights` saw: the balanced rule divides by this one
    (a weighted class is already partly balanced in training; dividing by its raw share again
    would overshoot)."""
    return np.clip(np.asarray(counts, dtype=np.float64), 0.0, None) * np.asarray(weights, dtype=np.float64)


def adjust(proba: np.ndarray, prior: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Probabilities whose argmax is the balanced decision: softmax(log p - tau log prior).

    tau = 1 is the Bayes rule for the balanced error; Menon et al. 2021 also tune tau on held-out data:
    above 1 it favours the rare classes further (a task's `balanced_tau`, chosen on validation data)."""
    if len(proba) == 0:
        return proba
    logits = np.log(np.clip(proba, 1e-12, 1.0)) - tau * np.log(np.asarray(prior, dtype=np.float64))
    logits -= logits.max(axis=1, keepdims=True)
    shifted = np.exp(logits)
    return shifted / shifted.sum(axis=1, keepdims=True)


def per_class(y: np.ndarray, proba: np.ndarray) -> dict[str, list[float]]:
    """Each class's recall (sensitivity) and positive predictivity of the argmax of `proba`
    (NaN where a class never occurs, or is never predicted)."""
    pred = proba.argmax(axis=1)
    recall, ppv = [], []
    for c in range(proba.shape[1]):
        actual, called = y == c, pred == c
        recall.append(float((pred[actual] == c).mean()) if actual.any() else math.nan)
        ppv.append(float((y[called] == c).mean()) if called.any() else math.nan)
    return {"recall": recall, "positive_predictivity": ppv}
