"""Does joining pay? Per-hospital local-only, global and personalised scores: one JSON line per (seed, hospital).

    .venv/bin/python benchmarks/benefit.py [--seeds 5] [--rounds 10] [--epsilon 1]            # heart disease
    .venv/bin/python benchmarks/benefit.py --data pneumoniamnist --hospitals 5 --epsilon 8 --seeds 1

The real round loop and ClientApp in this process (tests/inprocess_grid.py), the virtual
hospitals exactly as `fedward simulate --benefit` makes them (benefit-report=true,
share-benefit=true, folders under the run directory): each hospital trains its
local-only model (rounds x local epochs, no DP), mixes it with the final global model
(the mix chosen on its training split: client/personalise.py), and scores all three on
its own held-out split (prior correction cross-fitted there, as every evaluation). Heart disease: the 4 real hospitals (partition natural,
test-fraction 1/3, as benchmarks/heart_utility.py); MedMNIST: Dirichlet(0.5).
The wall-time share is the hospitals' benefit training (local-only + choosing the mix) over
the whole run's wall time, and the local-only training over the hospital's own federated
training time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.app import app  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.tasks import resolve  # noqa: E402
from report import write_section  # noqa: E402
from server.federation import run_federation  # noqa: E402
from tests.inprocess_grid import InProcessGrid  # noqa: E402

DATA_DIR = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))
DATA = {
    "heart": ("tabular", DATA_DIR / "heart_disease_uci", "natural", 4, 1 / 3),
    "pneumoniamnist": ("image-cnn", DATA_DIR / "medmnist" / "pneumoniamnist.npz", "dirichlet:0.5", 5, 0.25),
    "bloodmnist": ("image-cnn", DATA_DIR / "medmnist" / "bloodmnist.npz", "dirichlet:0.5", 5, 0.25),
}


def mean(values) -> float:  # type: ignore[no-untyped-def]
    """Mean over the finite values (AUROC is NaN on a held-out split with one class)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def one_run(args: argparse.Namespace, seed: int, out: Path) -> tuple[dict, float]:
    task, path, partition, hospitals, fraction = DATA[args.data]
    hospitals = args.hospitals or hospitals
    config = resolve(RunConfig(
        task=task, data_path=str(path), partition=partition, num_server_rounds=args.rounds, dp=args.epsilon > 0,
        epsilon=args.epsilon or 3.0, test_fraction=fraction, seed=seed, min_hospitals=hospitals,
        max_samples=args.max_samples, batch_size=args.batch_size, lr=args.lr, out_dir=str(out),
    ))
    out.mkdir(parents=True)
    node = {"benefit-report": True, "share-benefit": True, "benefit-dir": str(out / "benefit"),
            "reproducible-noise": True, "privacy-ledger": str(out / "ledger.sqlite")}
    nodes = [{"partition-id": i, "num-partitions": hospitals, **node} for i in range(hospitals)]
    start = time.perf_counter()
    run_federation(InProcessGrid(app, nodes), config)
    return json.loads((out / "model_card.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=sorted(DATA), default="heart")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=1.0, help="0: no DP")
    parser.add_argument("--hospitals", type=int, default=0)
    parser.add_argument("--max-samples", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the task's default")
    parser.add_argument("--lr", type=float, default=0.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    per_seed, shares, local_seconds, federated_seconds = [], [], [], []  # type: ignore[var-annotated]
    hospital_rows: dict[str, list[dict]] = {}
    weights: list[float] = []  # the local-only model's share in each hospital's personalised mix
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            card, seconds = one_run(args, seed, out)
            rows = [r for r in card["benefit"]["hospitals"] if r["status"] == "ok"]
            extra = 0.0
            for row in rows:
                saved = next((out / "benefit" / row["hospital"]).glob("*/benefit.json"))
                details = json.loads(saved.read_text())
                extra += details["local_only"]["seconds"] + details["personalised"]["seconds"]
                trained = sum(r["seconds"] or 0 for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                              if r["hospital"] == row["hospital"] and r["split"] == "train")
                local_seconds.append(details["local_only"]["seconds"])
                weights.append(details["personalised"]["weight_local"])
                federated_seconds.append(trained)
                hospital_rows.setdefault(row["hospital"], []).append(row)
                print(json.dumps({"measure": "benefit", "data": args.data, "seed": seed, "epsilon": args.epsilon or None,
                                  **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}}),
                      flush=True)
            shares.append(extra / seconds)
            averages = {k: mean(r[k] for r in rows) for k in rows[0] if k.endswith(("accuracy", "auroc"))
                    and "minus" not in k and not k.endswith(("_low", "_high"))}
            worst = min(r["personalised_accuracy"] - r["local_only_accuracy"] for r in rows)
            per_seed.append({"seed": seed, **averages, "worst_personalised_minus_local_accuracy": worst,
                             "benefit_share_of_wall_time": extra / seconds, "run_seconds": seconds})
            print(json.dumps({"measure": "benefit_mean_over_hospitals", "data": args.data, "seed": seed,
                              **{k: round(v, 4) for k, v in per_seed[-1].items() if k != "seed"}}), flush=True)
    table = []
    for name, rows in sorted(hospital_rows.items()):
        entry = {"hospital": name, "n train/test": f"{rows[0]['n_train']}/{rows[0]['n_test']}"}
        for model in ("local_only", "global", "personalised", "pooled", "pooled_dp"):
            for metric in ("balanced_accuracy", "auroc", "accuracy"):
                key = f"{model}_{metric}"
                if key in rows[0]:
                    entry[key] = mean(r[key] for r in rows)
        entry["personalised - local accuracy (min over seeds)"] = min(
            r["personalised_accuracy"] - r["local_only_accuracy"] for r in rows)
        table.append(entry)
    overall = {"hospital": "mean over hospitals",
               **{k: mean(s[k] for s in per_seed) for k in per_seed[0] if k not in ("seed", "run_seconds")}}
    overall["personalised - local accuracy (min over seeds)"] = min(
        s["worst_personalised_minus_local_accuracy"] for s in per_seed)
    summary = {
        "personalised_minus_local_mean_accuracy": overall["personalised_accuracy"] - overall["local_only_accuracy"],
        "global_minus_local_mean_accuracy": overall["global_accuracy"] - overall["local_only_accuracy"],
        "worst_hospital_seed_personalised_minus_local_accuracy": overall["personalised - local accuracy (min over seeds)"],
        "worst_hospital_mean_personalised_minus_local_accuracy": min(
            e["personalised_accuracy"] - e["local_only_accuracy"] for e in table),
        "benefit_share_of_wall_time": statistics.fmean(shares),
        "mean_weight_local": statistics.fmean(weights),
        # summed over hospitals and seeds: a tiny hospital's 0.1 s-rounded round times would dominate a mean of ratios
        "local_only_over_federated_training_time": sum(local_seconds) / sum(federated_seconds)
        if sum(federated_seconds) else None,
    }
    print(json.dumps({"measure": "benefit_summary", "data": args.data, **{k: v and round(v, 4) for k, v in summary.items()}}),
          flush=True)
    if args.no_write:
        return
    columns = ["hospital", "n train/test"] + [f"{m}_{k}" for m in ("local_only", "global", "personalised", "pooled", "pooled_dp")
                                               for k in ("balanced_accuracy", "auroc", "accuracy")] + \
        ["personalised - local accuracy (min over seeds)"]
    write_section(
        f"Benefit per hospital: {args.data}, epsilon {args.epsilon or 'no DP'}", [*table, overall], columns,
        notes=(f"{args.seeds} seeds, {args.rounds} rounds; means over seeds on each hospital's own held-out split. "
               f"Personalised - local-only mean accuracy {summary['personalised_minus_local_mean_accuracy']:+.3f} "
               f"(target >= +0.02), global - local-only {summary['global_minus_local_mean_accuracy']:+.3f}; worst "
               f"hospital (mean over seeds) {summary['worst_hospital_mean_personalised_minus_local_accuracy']:+.3f}, worst "
               f"single (hospital, seed) {summary['worst_hospital_seed_personalised_minus_local_accuracy']:+.3f} "
               f"(target >= -0.01). Personalised: local-only and global probabilities mixed w : 1 - w, w chosen on "
               f"the training split by 2-fold out-of-fold accuracy (mean chosen w {summary['mean_weight_local']:.2f}). "
               f"The hospitals' benefit training took "
               f"{100 * summary['benefit_share_of_wall_time']:.1f}% of the run's wall time"
               + (f"; a local-only training took {summary['local_only_over_federated_training_time']:.2f}x the "
                  "hospital's own federated (DP) training time." if summary["local_only_over_federated_training_time"]
                  else ".")),
    )


if __name__ == "__main__":
    main()
