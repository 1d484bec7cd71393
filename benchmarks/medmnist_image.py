"""The default image-cnn model and settings on MedMNIST: federated under DP, beside centralised without DP.

    .venv/bin/python benchmarks/medmnist_image.py [--data pneumoniamnist bloodmnist] [--seeds 3] [--no-write]
        [--methods dp central fed-no-dp]

Each federated row is `fedward simulate --task image-cnn --data X.npz --hospitals 5
--partition dirichlet:0.5 --epsilon 8 --seed S` with every other setting at its default
(the run's round loop and ClientApp in this process, tests/inprocess_grid.py, no Ray),
delta 1e-5 (<= 1 / n at every hospital). The final global model is scored on the official
validation split (where the defaults were chosen, benchmarks/medmnist_image_search.py) and
on the official test split (never used to choose anything), by argmax. Beside it, the same
model and code trained centralised on the whole train split without DP for as many epochs
as a hospital's local epochs over the run, and (`fed-no-dp`) the same federation without DP,
so that the cost of federating (Dirichlet label skew) and the cost of DP read apart.
Mean and spread (min-max) over seeds; each run's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RunConfig  # noqa: E402
from common.tasks import get_task, load_data, resolve  # noqa: E402
from inprocess import federate, virtual_hospitals  # noqa: E402
from report import write_section  # noqa: E402
from server.operating_point import operating_point  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "medmnist"
HOSPITALS = 5
TARGET = 0.88
SETTINGS = ("num_server_rounds", "batch_size", "lr", "lr_schedule", "max_grad_norm")  # the task's defaults, resolved
NO_DP_SETTINGS = ("class_weighting", "server_momentum")  # the task's recipe without DP
METHODS = {"dp": ("fedavg, 5 hospitals", 8.0), "central": ("centralised", 0.0), "fed-no-dp": ("fedavg, 5 hospitals", 0.0)}
CPU = torch.device("cpu")


def config_for(name: str, seed: int, epsilon: float) -> RunConfig:
    """What `fedward simulate --task image-cnn --data X --hospitals 5 --partition dirichlet:0.5
    --epsilon E --seed S` runs (no DP where epsilon is 0)."""
    return resolve(RunConfig(
        task="image-cnn", data_path=str(DATA / f"{name}.npz"), partition="dirichlet:0.5",
        dp=epsilon > 0, epsilon=epsilon or 3.0, seed=seed, min_hospitals=HOSPITALS,
    ))


def scored(model: torch.nn.Module, config: RunConfig) -> dict[str, float]:
    task, data = get_task(config.task), load_data(config)
    out = {}
    for split, samples in (("val", data.validation), ("test", data.test)):
        scores = task.evaluate(model, samples, CPU)
        for key in ("accuracy", "balanced-accuracy", "auroc", "macro-f1"):
            out[f"{split}_{key}"] = scores[key]
    if data.num_classes == 2:  # the server's decision cut, chosen on the validation split (model card)
        point = operating_point(model, data.validation, data.test, CPU)
        if point is not None:
            out["test_accuracy-at-val-cut"] = point["test"]["accuracy"]
    return out


def federated(config: RunConfig) -> dict[str, float]:
    run = federate(config, virtual_hospitals(HOSPITALS))
    data = load_data(config)
    model = get_task(config.task).build_model(data.input_shape, data.num_classes, config)
    model.load_state_dict(run.weights)
    return {**scored(model, config), "epsilon_max": run.epsilon_max}


def centralised(config: RunConfig) -> dict[str, float]:
    """The same model and training code on the whole train split, no DP."""
    task, data = get_task(config.task), load_data(config)
    torch.manual_seed(config.seed)
    model = task.build_model(data.input_shape, data.num_classes, config)
    epochs = config.num_server_rounds * config.local_epochs
    task.train(model, data.train, data.num_classes, config.replace(local_epochs=epochs), None, CPU, config.seed)
    return scored(model, config)


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["pneumoniamnist", "bloodmnist"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--section", default="",
                        help="write the table under this title (with --notes) instead of the data set's default-settings section")
    parser.add_argument("--notes", default="")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["dp", "central"])
    parser.add_argument("--from-log", type=Path, metavar="LOG",
                        help="write the tables from the per-run JSON lines of an earlier (possibly cut short) run's log")
    args = parser.parse_args()
    if args.from_log:
        for name, table in tables_from_log(args.from_log).items():
            write(name, table)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name in args.data:
        if not (DATA / f"{name}.npz").exists():
            sys.exit(f"{DATA / name}.npz is missing: set FEDWARD_DATA_DIR to the folder holding medmnist/")
        writer = write if not args.section else (
            lambda n, table: write_section(args.section, table, COLUMNS, notes=args.notes))
        rows_for(name, args.seeds, args.methods, None if args.no_write else writer)


def rows_for(name: str, seeds: int, methods: list[str],
             write_table: Callable[[str, list[dict]], None] | None = None) -> list[dict]:
    """The table's rows, one per method; `write_table` gets the table so far after each method
    (a long BloodMNIST run leaves its finished rows in docs/benchmarks.md)."""
    table = []
    for method, epsilon in (METHODS[m] for m in methods):
        runs, seconds = [], []
        for seed in range(seeds):
            config = config_for(name, seed, epsilon)
            start = time.perf_counter()
            scores = centralised(config) if method == "centralised" else federated(config)
            seconds.append(time.perf_counter() - start)
            runs.append(scores)
            print(json.dumps({"measure": "medmnist_image", "data": name, "method": method,
                              "epsilon": epsilon or None, "seed": seed, "seconds": seconds[-1], **scores}),
                  flush=True)
        table.append(summary_row(name, method, epsilon, runs, seconds))
        if write_table is not None:
            write_table(name, table)
    return table


def tables_from_log(log: Path) -> dict[str, list[dict]]:
    """The tables of the seeds a run's log reports as finished (its `measure` lines), in their order."""
    grouped: dict[tuple[str, str, float], list[dict]] = {}
    for line in log.read_text().splitlines():
        if line.startswith('{"measure": "medmnist_image"'):
            run = json.loads(line)
            grouped.setdefault((run["data"], run["method"], run["epsilon"] or 0.0), []).append(run)
    tables: dict[str, list[dict]] = {}
    for (name, method, epsilon), runs in grouped.items():
        tables.setdefault(name, []).append(summary_row(name, method, epsilon, runs, [r["seconds"] for r in runs]))
    return tables


def summary_row(name: str, method: str, epsilon: float, runs: list[dict], seconds: list[float]) -> dict:
    config = config_for(name, 0, epsilon)
    return {
        "data": name, "method": method, "epsilon": epsilon or "no DP",
        **{f"{split} {key}": spread([r[f"{split}_{key}"] for r in runs])
           for split in ("val", "test") for key in ("accuracy", "balanced-accuracy", "auroc")},
        "test accuracy at val cut": (spread([r["test_accuracy-at-val-cut"] for r in runs])
                                     if all("test_accuracy-at-val-cut" in r for r in runs) else None),
        "epsilon spent (max)": max(r.get("epsilon_max", 0.0) for r in runs) or None,
        "settings": ", ".join(f"{k.replace('_', '-')} {getattr(config, k)}" for k in SETTINGS + NO_DP_SETTINGS
                              if (k != "max_grad_norm" or config.dp) and (k != "class_weighting" or not config.dp)
                              and (k != "server_momentum" or method != "centralised")) + " (defaults)",
        "seeds": len(runs), "seconds a run (max)": max(seconds),
    }


COLUMNS = ["data", "method", "epsilon", "settings", "val accuracy", "test accuracy", "val balanced-accuracy",
           "test balanced-accuracy", "val auroc", "test auroc", "test accuracy at val cut", "epsilon spent (max)", "seeds",
           "seconds a run (max)"]


def write(name: str, table: list[dict]) -> None:
    config = config_for(name, 0, 8.0)
    write_section(
        f"MedMNIST {name}: the default image-cnn model and settings", table,
        COLUMNS,
        notes=(f"`fedward simulate --task image-cnn --data {name}.npz --hospitals 5 --partition dirichlet:0.5 --epsilon 8` "
               f"with no other flag: model `{config.model or 'scatter'}` (scattering features + a linear head), "
               f"{config.num_server_rounds} rounds of {config.local_epochs} local epoch(s), expected batch "
               f"{config.batch_size}, lr {config.lr} ({config.lr_schedule} over the rounds), clip {config.max_grad_norm}, delta {config.delta}, server momentum "
               f"{config.server_momentum} (FedAvgM; post-processing of the noised updates); "
               "run in process (no Ray). Centralised: the same model and code on the whole train split without DP, "
               "as many epochs as a hospital trains over the run (the task's no-DP defaults); FedAvg no DP: the same federation "
               "without DP (no-DP defaults), beside centralised it is the cost of federating alone. Two classes: the test accuracy at the "
               "decision cut the server chooses on the validation split (Youden's J, model card operating_point) beside argmax. The defaults "
               "are the best point of the validation search (benchmarks/medmnist_image_search.py). Mean (min-max) over seeds 0..n-1; argmax, no "
               f"decision cut. Nothing was chosen on the test split. Target: >= {TARGET} test accuracy at epsilon 8."),
    )


if __name__ == "__main__":
    main()
