"""Synthetic images from a federated DP GAN: train on synthetic, test on real (TSTR).

    .venv/bin/python benchmarks/gan_tstr.py [--data pneumoniamnist] [--epsilons 0 10] [--rounds 20]
        [--local-epochs 1] [--hospitals 5] [--seeds 0 1 2]

A conditional DCGAN is trained by `hospitals` hospitals (PneumoniaMNIST's
official train split, iid) with FedAvg through the real round loop and
ClientApp in process; under DP only the discriminator touches the images and
each hospital's epsilon for the whole run is the stated one (delta 1e-5). After
the run the server does what `fedward simulate --task image-gan` does
(common/tasks/image_gan/synthetic.py): it draws as many labelled synthetic
images as 2,000 real training images, trains fedward's image CNN on each set
alone (5 epochs, no DP) and scores both on the official test split:

- tstr: trained on synthetic images only;
- trtr: trained on 2,000 real training images (the reference);
- ratio = tstr / trtr. Target (issue 5): >= 0.9 at epsilon <= 10.

The majority-class accuracy of the test split is given beside them: a
classifier that learned nothing from the synthetic images scores about that.
Each epsilon is run once per seed (the split, the GAN's and the CNN's
initialisation and sampling all follow it); a summary row per epsilon gives the
mean and the spread (sample standard deviation) of the ratio over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RunConfig  # noqa: E402
from common.tasks import load_data, resolve  # noqa: E402
from inprocess import federate, virtual_hospitals  # noqa: E402
from report import write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "medmnist"


def run(name: str, hospitals: int, rounds: int, local_epochs: int, epsilon: float, seed: int) -> dict:
    config = resolve(RunConfig(
        task="image-gan", data_path=str(DATA / f"{name}.npz"), partition="iid", num_server_rounds=rounds,
        local_epochs=local_epochs, dp=epsilon > 0, epsilon=epsilon or 10.0, seed=seed, min_hospitals=hospitals,
    ))
    test = load_data(config).test
    assert test is not None
    start = time.perf_counter()
    run = federate(config, virtual_hospitals(hospitals))
    final = run.card["final_metrics"]
    return {
        "data": name, "hospitals": hospitals, "rounds": rounds, "local_epochs": local_epochs,
        "epsilon": epsilon or "no DP", "tstr": final["tstr-accuracy"], "trtr": final["trtr-accuracy"],
        "ratio": final["tstr-ratio"], "majority": float(np.bincount(test.y).max() / len(test.y)),
        "epsilon_spent": run.epsilon_max,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["pneumoniamnist"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--section", default="", help="a suffix for the docs section (quick checks keep theirs apart)")
    args = parser.parse_args()
    table = []
    for name in args.data:
        if not (DATA / f"{name}.npz").exists():
            sys.exit(f"{DATA / name}.npz is missing: set FEDWARD_DATA_DIR to the folder holding medmnist/")
        for epsilon in args.epsilons:
            rows = []
            for seed in args.seeds:
                row = {"seed": seed, **run(name, args.hospitals, args.rounds, args.local_epochs, epsilon, seed)}
                print(json.dumps({"measure": "gan_tstr", **row}), flush=True)
                rows.append(row)
            ratios = [r["ratio"] for r in rows]
            summary = {"data": name, "seed": f"mean of {len(rows)}", "epsilon": rows[0]["epsilon"],
                       "tstr": statistics.mean(r["tstr"] for r in rows), "trtr": statistics.mean(r["trtr"] for r in rows),
                       "ratio": statistics.mean(ratios),
                       "ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else float("nan")}
            print(json.dumps({"measure": "gan_tstr_summary", **summary}), flush=True)
            table.extend([*rows, summary])
    write_section(
        "GAN: train on synthetic, test on real" + (f", {args.section}" if args.section else ""), table,
        ["data", "hospitals", "rounds", "local_epochs", "epsilon", "seed", "tstr", "trtr", "ratio", "ratio_sd",
         "majority", "epsilon_spent", "seconds"],
        notes="Conditional DCGAN, FedAvg, iid hospitals; DP on the discriminator only. tstr / trtr: the image "
              "CNN trained on 2,000 synthetic / 2,000 real training images (5 epochs), accuracy on the "
              "official test split. Target: ratio >= 0.9 at epsilon <= 10. The discriminator's per-sample "
              "gradients come from fedward's `layers` mode since 2026-11-23 (Opacus hooks before).",
    )


if __name__ == "__main__":
    main()
