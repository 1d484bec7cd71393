"""sequence-rnn without DP on small ECG sets a user brings as a .npz (the UCR ECG200 format).

The held-out public ECG benchmark of issue 18 is never read here. Its stand-in: beats of
MIT-BIH DS1 patients (never DS2), z-normalised MLII beats from fedward's own reader
(channel 0 of `read_record`), normal against any arrhythmia, ~1/3 abnormal, the test beats
from other patients than the training ones; 100 or 500 training beats, 100 test beats,
one patient split per set seed. Each set runs `fedward simulate --task sequence-rnn --data
SET.npz --no-dp` (4 hospitals, every other setting the task's default) with each
`--min-local-steps` value. Settings are chosen on the hospitals' held-out splits
("validation": the federated score of the last round); the central test split is reported.
Baselines on the same splits: the majority class and 1-nearest-neighbour (Euclidean), the
UCR archive's reference classifier.

    .venv/bin/python benchmarks/small_ecg.py --sets 0 1 2 --sizes 100 500 --min-steps 0 30 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.tasks.sequence_rnn.dataset import read_record  # noqa: E402
from report import ROOT, write_section  # noqa: E402
from simulate_run import simulate_and_score  # noqa: E402

DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201", "203", "205",
       "207", "208", "209", "215", "220", "223", "230")
ABNORMAL_SHARE, TEST_BEATS = 0.31, 100


def make_set(records_dir: Path, seed: int, size: int, path: Path) -> dict[str, float]:
    """Writes the .npz; returns its baselines on the central test split."""
    rng = np.random.default_rng(seed)
    patients = rng.permutation(DS1)
    beats = {r: read_record(records_dir / r) for r in patients}

    def draw(records: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([beats[r][0][:, :, 0] for r in records])
        y = (np.concatenate([beats[r][1] for r in records]) > 0).astype(np.int64)
        abnormal = round(ABNORMAL_SHARE * count)
        pick = np.concatenate([rng.choice(np.flatnonzero(y == 0), count - abnormal, replace=False),
                               rng.choice(np.flatnonzero(y == 1), abnormal, replace=False)])
        pick = rng.permutation(pick)
        return x[pick], y[pick]

    x, y = draw(patients[:11], size)
    x_test, y_test = draw(patients[11:], TEST_BEATS)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    nearest = y[((x_test[:, None, :] - x[None]) ** 2).sum(-1).argmin(1)]
    return {"majority": float(max(y_test.mean(), 1 - y_test.mean())), "one_nn": float(np.mean(nearest == y_test))}


def run(data: Path, min_steps: int, out: Path) -> dict[str, float]:
    scores = simulate_and_score(["--task", "sequence-rnn", "--data", str(data), "--no-dp",
                                 "--min-local-steps", str(min_steps)], out)
    scores.pop("majority")  # the set's own baseline, from make_set
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))
                        / "mitbih_arrhythmia", help="the MIT-BIH WFDB folder")
    parser.add_argument("--sets", type=int, nargs="+", default=[0, 1, 2], help="patient splits (set seeds)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500], help="training beats")
    parser.add_argument("--min-steps", type=int, nargs="+", default=[0, 30, 100])
    parser.add_argument("--section", default="sequence-rnn without DP on small ECG sets")
    args = parser.parse_args()
    rows, work = [], Path(tempfile.mkdtemp(prefix="small-ecg-"))
    for size in args.sizes:
        for seed in args.sets:
            data = work / f"set{seed}_{size}.npz"
            base = make_set(args.data, seed, size, data)
            for steps in args.min_steps:
                row = {"train_beats": size, "set": seed, "min_local_steps": steps, **base,
                       **run(data, steps, work / f"run_{seed}_{size}_{steps}")}
                print(json.dumps(row), flush=True)
                rows.append(row)
    keys = ["val_balanced_accuracy", "val_auroc", "test_balanced_accuracy", "test_accuracy", "test_auroc",
            "majority", "one_nn"]
    table = []
    for size in args.sizes:
        for steps in args.min_steps:
            mine = [r for r in rows if r["train_beats"] == size and r["min_local_steps"] == steps]
            table += mine
            table.append({"train_beats": size, "set": f"mean of {len(mine)}", "min_local_steps": steps,
                          **{k: statistics.mean(r[k] for r in mine) for k in keys}})
    columns = ["train_beats", "set", "min_local_steps", "steps_a_round", *keys, "seconds"]
    write_section(args.section, table, columns, notes=(
        "`fedward simulate --task sequence-rnn --data SET.npz --no-dp --min-local-steps K`, 4 hospitals (iid), "
        "every other setting the task's default (10 rounds, batch 32, lr 0.01, cnn-lstm). Sets: MIT-BIH DS1 "
        "patients only (DS2 is never read), z-normalised MLII beats (fedward's reader, channel 0), normal against "
        "any arrhythmia, 31% abnormal; 11 patients give the training beats, the other 11 the 100 test beats; one "
        "patient split per set. val: the hospitals' held-out splits (the federated score of the last round), "
        "where K is chosen; test: the central test split, reported. steps_a_round: the fewest local steps a "
        "hospital took in a round. majority: always the common class; one_nn: 1-nearest-neighbour (Euclidean) "
        "on the training beats, the UCR archive's reference."))


if __name__ == "__main__":
    main()
