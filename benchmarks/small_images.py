"""image-cnn without DP on small image sets: MedMNIST subsampled with --max-samples.

A hospital of a few hundred images takes a few optimiser steps an epoch at batch 32;
this measures `--min-local-steps` (the floor of local steps a round, without DP) on
such sets: `fedward simulate --task image-cnn --data X.npz --max-samples N --no-dp
--seed S --min-local-steps K`, 4 hospitals (iid), every other setting the task's
default. Chosen on the hospitals' held-out splits (the federated score of the last
round); the official test split is reported.

    .venv/bin/python benchmarks/small_images.py --sets bloodmnist:400 bloodmnist:1000 pneumoniamnist:400 --seeds 0 1 2 --min-steps 0 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, write_section  # noqa: E402
from simulate_run import simulate_and_score  # noqa: E402

KEYS = ["val_balanced_accuracy", "val_auroc", "test_balanced_accuracy", "test_accuracy", "test_auroc"]


def run(data: Path, samples: int, seed: int, min_steps: int, out: Path, hospitals: int = 4,
        partition: str = "iid") -> dict[str, float]:
    return simulate_and_score(["--task", "image-cnn", "--data", str(data), "--max-samples", str(samples),
                               "--seed", str(seed), "--hospitals", str(hospitals), "--partition", partition,
                               "--no-dp", "--min-local-steps", str(min_steps)], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medmnist", type=Path,
                        default=Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "medmnist")
    parser.add_argument("--sets", nargs="+", default=["bloodmnist:400", "bloodmnist:1000", "pneumoniamnist:400"],
                        help="NAME:SAMPLES")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-steps", type=int, nargs="+", default=[0, 30])
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--section", default="image-cnn without DP on small image sets")
    args = parser.parse_args()
    rows, work = [], Path(tempfile.mkdtemp(prefix="small-images-"))
    for spec in args.sets:
        name, samples = spec.split(":")
        for seed in args.seeds:
            for steps in args.min_steps:
                row = {"data": name, "samples": int(samples), "seed": seed, "min_local_steps": steps,
                       **run(args.medmnist / f"{name}.npz", int(samples), seed, steps, work / f"{name}_{samples}_{seed}_{steps}",
                           args.hospitals, args.partition)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    table = []
    for spec in args.sets:
        name, samples = spec.split(":")
        for steps in args.min_steps:
            mine = [r for r in rows if r["data"] == name and r["samples"] == int(samples) and r["min_local_steps"] == steps]
            table += mine
            table.append({"data": name, "samples": int(samples), "seed": f"mean of {len(mine)}", "min_local_steps": steps,
                          **{k: statistics.mean(r[k] for r in mine) for k in [*KEYS, "majority"]}})
    write_section(args.section, table, ["data", "samples", "seed", "min_local_steps", "steps_a_round", *KEYS,
                                        "majority", "seconds"], notes=(
        "`fedward simulate --task image-cnn --data NAME.npz --max-samples N --seed S --no-dp --min-local-steps K`, "
        f"{args.hospitals} hospitals ({args.partition}), every other setting the task's no-DP default (10 rounds, batch 32, lr 0.003, server "
        "momentum 0.7, the scatter model). samples: the training images kept (MedMNIST train split, subsampled; 0: all); "
        "val: the hospitals' held-out splits (the federated score of the last round), where K is chosen; test: the "
        "official test split, reported; majority: always the test split's common class. steps_a_round: the fewest "
        "local steps a hospital took in a round."))


if __name__ == "__main__":
    main()
