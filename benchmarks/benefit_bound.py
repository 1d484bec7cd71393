"""How much can joining give a heart-disease hospital at most? Non-private references on fedward's own splits.

    .venv/bin/python benchmarks/benefit_bound.py [--seeds 5] [--no-write]

The benefit target (issue 19) asks a hospital's personalised model to beat its
local-only model by >= 0.02 mean accuracy. Whatever a federation learns, privately or
not, it learns from the hospitals' training splits; these references train on the same
splits as `benchmarks/benefit.py` (fedward's natural partition and each hospital's
stratified 1/3 held-out split, the same seeds) with no privacy at all, so they bound
what joining can give this data for each model family:

- local-only: the hospital's training split alone;
- pooled: every hospital's training split in one model (what a perfect, noise-free
  federation of one global model would reach);
- pooled + site: the same with a one-hot hospital indicator (a per-hospital intercept:
  the personalisation a shared model can express);
- mix 1/2: local-only and pooled + site probabilities averaged;
- oracle mix: the best of w in {0, 1/4, 1/2, 3/4, 1} for w x local + (1 - w) x pooled +
  site, chosen on the held-out split itself: not a method (it reads the answers), an
  upper bound for the mixing family fedward's personalised model uses.

Model families: L2 logistic regression (fedward's tabular model), its C chosen by 3-fold
cross-validation on the training split it is fitted to (scikit-learn), and a random
forest. Accuracy by argmax on each hospital's held-out split, mean over seeds, then over
hospitals; one JSON line per (family, arm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RunConfig  # noqa: E402
from common.data import Samples, local_split  # noqa: E402
from common.partition import partition_index  # noqa: E402
from common.tasks import load_data, resolve  # noqa: E402
from report import write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "heart_disease_uci"
HOSPITALS, TEST_FRACTION = 4, 1 / 3  # as benchmarks/benefit.py
MIX = (0.0, 0.25, 0.5, 0.75, 1.0)
ARMS = ("local-only", "pooled", "pooled + site", "mix 1/2", "oracle mix")


def logistic() -> ClassifierMixin:
    return GridSearchCV(LogisticRegression(max_iter=5000), {"C": [0.01, 0.1, 1.0, 10.0]},
                        cv=StratifiedKFold(3, shuffle=True, random_state=0))


def forest() -> ClassifierMixin:
    return RandomForestClassifier(300, min_samples_leaf=3, random_state=0)


FAMILIES: dict[str, Callable[[], ClassifierMixin]] = {"logistic regression (C by 3-fold CV)": logistic,
                                                      "random forest": forest}


def hospitals(seed: int) -> list[tuple[str, Samples, Samples]]:
    """Each hospital's (name, train, held-out) exactly as a simulated hospital splits it."""
    config = resolve(RunConfig(task="tabular", data_path=str(DATA), partition="natural",
                               test_fraction=TEST_FRACTION, seed=seed, min_hospitals=HOSPITALS))
    data = load_data(config)
    out = []
    for index in range(HOSPITALS):
        samples = data.train.take(partition_index(data.train, config.partition_spec, HOSPITALS, index, seed))
        train, test = local_split(samples, TEST_FRACTION, seed)
        out.append((str(samples.groups[0]), train, test))
    return out


def fitted_proba(make: Callable[[], ClassifierMixin], x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """P(class 1..C) of a model fitted on (x, y); a training split with one class, or too few of
    one class for 3 folds, predicts its class frequencies (there is nothing else to learn)."""
    counts = np.bincount(y, minlength=2)
    if counts.min() < 3:
        return np.tile(counts / counts.sum(), (len(x_test), 1))
    return make().fit(x, y).predict_proba(x_test)


def site_columns(k: int, n: int) -> np.ndarray:
    return np.tile(np.eye(HOSPITALS)[k], (n, 1))


def one_seed(seed: int) -> dict[tuple[str, str, str], float]:
    sites = hospitals(seed)
    x = np.concatenate([train.x for _, train, _ in sites])
    y = np.concatenate([train.y for _, train, _ in sites])
    with_site = np.concatenate([x, np.concatenate([site_columns(k, len(t.y)) for k, (_, t, _) in enumerate(sites)])], 1)
    scores: dict[tuple[str, str, str], float] = {}
    for family, make in FAMILIES.items():
        pooled, pooled_site = make().fit(x, y), make().fit(with_site, y)
        for k, (name, train, test) in enumerate(sites):
            local = fitted_proba(make, train.x, train.y, test.x)
            shared = pooled_site.predict_proba(np.concatenate([test.x, site_columns(k, len(test.y))], 1))
            arms = {"local-only": local, "pooled": pooled.predict_proba(test.x), "pooled + site": shared,
                    "mix 1/2": 0.5 * local + 0.5 * shared}
            for arm, proba in arms.items():
                scores[(family, arm, name)] = float((proba.argmax(1) == test.y).mean())
            scores[(family, "oracle mix", name)] = max(
                float(((w * local + (1 - w) * shared).argmax(1) == test.y).mean()) for w in MIX)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    runs = [one_seed(seed) for seed in range(args.seeds)]
    names = sorted({name for (_, _, name) in runs[0]})
    rows = []
    for family in FAMILIES:
        local_mean = None
        for arm in ARMS:
            per_hospital = {name: statistics.fmean(r[(family, arm, name)] for r in runs) for name in names}
            mean = statistics.fmean(per_hospital.values())
            local_mean = mean if arm == "local-only" else local_mean
            row = {"family": family, "arm": arm, **{n: round(v, 3) for n, v in per_hospital.items()},
                   "mean over hospitals": round(mean, 4), "minus local-only": round(mean - (local_mean or mean), 4)}
            print(json.dumps({"measure": "benefit_bound", **row}), flush=True)
            rows.append(row)
    if args.no_write:
        return
    write_section(
        "Benefit per hospital: heart, what joining can give at most (no DP)", rows,
        ["family", "arm", *names, "mean over hospitals", "minus local-only"],
        notes=(f"{args.seeds} seeds; each hospital's own held-out split (the splits of benchmarks/benefit.py), accuracy "
               "by argmax, mean over seeds. No privacy anywhere: these bound what any federation of these four "
               "hospitals can give, private or not. Oracle mix chooses the mixing weight on the held-out split itself "
               "(an upper bound, not a method). Target of issue 19: personalised >= local-only + 0.02."),
    )


if __name__ == "__main__":
    main()
