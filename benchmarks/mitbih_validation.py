"""MIT-BIH: choose the ECG task's DP settings on validation patients (DS1 only, never DS2).

    .venv/bin/python benchmarks/mitbih_validation.py [--configs "" "batch=256" "rounds=20" "balanced=0"]
        [--seeds 0 1 2]

DS1's 22 records (the training side of benchmarks/mitbih_utility.py, at most 300 N
beats each) are cut into 4 folds of patients. For each fold a federated DP run
(epsilon 3, 4 hospitals of the remaining patients, record-level DP, the real round
loop and ClientApp in process) trains on three folds and its model scores the
held-out fold's patients; the four folds' predictions together give each class's
recall and the macro-F1 over all 22 patients, by argmax and by the server's balanced
rule on the run's DP class prior. A config is a list of run settings changed from the
task's defaults (batch=, lr=, rounds=, epochs=, clip=, momentum= for the server's,
schedule=, model=) and balanced=0 (no class-weighted DP training). DS2 is never read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common.tasks.sequence_rnn as sequence  # noqa: E402
from common.class_prior import adjust, prior_of, share_floor  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.metrics import classification_metrics  # noqa: E402
from common.tasks import get_task, resolve  # noqa: E402
from common.training import predict_proba  # noqa: E402
from inprocess import federate, virtual_hospitals  # noqa: E402
from mitbih_utility import DS1, beats  # noqa: E402
from report import write_section  # noqa: E402

FOLDS, HOSPITALS = 4, 4
TAUS: list[float] = []  # --taus: the balanced rule with log prior scaled by tau, scored post hoc
SDS: list[float] = []  # --unconfirmed-sds: the rule at the task's tau on the prior floored at k sd of its noise
CAPPED = False  # --cap-floored: also score each floor with tau at most 1 on the classes at the floor
SETTINGS = {"batch": "batch_size", "lr": "lr", "rounds": "num_server_rounds", "epochs": "local_epochs",
            "clip": "max_grad_norm", "momentum": "server_momentum", "schedule": "lr_schedule",
            "model": "model"}


def parse(config: str) -> tuple[dict[str, float], bool]:
    changes, balanced = {}, True
    for part in config.split():
        key, _, value = part.partition("=")
        if key == "balanced":
            balanced = value != "0"
        elif key in SETTINGS:
            text = key in ("schedule", "model")
            changes[SETTINGS[key]] = (value if text else float(value) if key in ("lr", "clip", "momentum")
                                      else int(value))
        else:
            sys.exit(f"unknown setting {key!r} in config {config!r}; use {', '.join(SETTINGS)} or balanced")
    return changes, balanced


def capped(proba: np.ndarray, section: dict | None, k: float, tau: float) -> np.ndarray:
    """The rule on the prior floored at k sd, with tau at most 1 on the classes at that floor."""
    if not section:
        return proba
    summed, hospitals = np.array(section["summed"]), len(section["hospitals"])
    floored = summed / summed.sum() < share_floor(summed.sum(), hospitals, k)
    return adjust(proba, prior_of(summed, hospitals, k), np.where(floored, min(tau, 1.0), tau))


def cross_validated(config: str, seed: int) -> dict[str, object]:
    changes, balanced = parse(config)
    sequence.TASK = dataclasses.replace(sequence.TASK, balanced_training=balanced)
    train = beats(DS1, 300, 0)
    records = np.array(sorted(set(train.groups)))
    np.random.default_rng(0).shuffle(records)
    folds = np.array_split(records, FOLDS)
    scored = {"argmax": np.zeros((len(train.y), 5)), "balanced": np.zeros((len(train.y), 5))}
    for name in [f"tau{tau:g}" for tau in TAUS] + [f"sd{k:g}" for k in SDS] + [f"sd{k:g}cap" for k in SDS if CAPPED]:
        scored[name] = np.zeros((len(train.y), 5))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k, fold in enumerate(folds):
            held = np.isin(train.groups, fold)
            kept = [r for r in records if r not in set(fold)]
            site = np.array([f"h{kept.index(r) % HOSPITALS}" for r in train.groups[~held]])
            path = Path(tmp) / f"fold{k}.npz"
            np.savez(path, x=train.x[~held], y=train.y[~held], groups=site, x_test=train.x[held], y_test=train.y[held])
            run_config = resolve(RunConfig(task="sequence-rnn", data_path=str(path), partition="natural", dp=True,
                                           epsilon=3.0, seed=seed, min_hospitals=HOSPITALS, **changes))
            with contextlib.redirect_stdout(io.StringIO()):
                run = federate(run_config, virtual_hospitals(HOSPITALS))
            model = get_task("sequence-rnn").build_model(train.x.shape[1:], 5, run_config)
            model.load_state_dict(run.weights)
            proba = predict_proba(model, train.x[held], torch.device("cpu"))
            section = run.card["final_metrics"].get("class_prior")
            scored["argmax"][held] = proba
            scored["balanced"][held] = (adjust(proba, np.array(section["prior"]), run_config.balanced_tau)
                                        if section else proba)
            for tau in TAUS:  # the rule with its prior term scaled (Menon et al. 2021's tau), same run
                scored[f"tau{tau:g}"][held] = adjust(proba, np.array(section["prior"]), tau) if section else proba
            for k in SDS:  # the run's summed histogram, each class floored at k sd of its summed noise, same run
                prior = prior_of(np.array(section["summed"]), len(section["hospitals"]), k) if section else None
                scored[f"sd{k:g}"][held] = adjust(proba, prior, run_config.balanced_tau) if section else proba
                if CAPPED:  # classes whose noisy share is under the floor: tau <= 1 (no extrapolation)
                    scored[f"sd{k:g}cap"][held] = capped(proba, section, k, run_config.balanced_tau)
    row: dict[str, object] = {"config": config or "defaults", "seed": seed, "seconds": time.perf_counter() - start,
                              "batch": run_config.batch_size, "lr": run_config.lr,
                              "rounds": run_config.num_server_rounds, "balanced_training": balanced}
    for rule, proba in scored.items():
        pred = proba.argmax(axis=1)
        row[f"{rule}_macro_f1"] = classification_metrics(train.y, proba)["macro-f1"]
        for c, name in enumerate("NSVF"):
            row[f"{rule}_recall_{name}"] = float((pred[train.y == c] == c).mean())
            row[f"{rule}_ppv_{name}"] = float((train.y[pred == c] == c).mean()) if (pred == c).any() else 0.0
        row[f"{rule}_calls_Q"] = int((pred == 4).sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["", "batch=256", "balanced=0"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--taus", type=float, nargs="*", default=[],
                        help="also score the balanced rule with its log prior scaled by each tau (same runs)")
    parser.add_argument("--unconfirmed-sds", type=float, nargs="*", default=[],
                        help="also score the rule at the task's tau on the run's summed histogram with each class's "
                             "share floored at k standard deviations of its summed noise (same runs)")
    parser.add_argument("--cap-floored", action="store_true",
                        help="with --unconfirmed-sds, also score each floor with tau at most 1 on the floored classes")
    parser.add_argument("--section", default=None,
                        help="the docs/benchmarks.md section to write (a new title keeps the earlier table); default: "
                             "'MIT-BIH: DP settings chosen on DS1 validation patients', with --taus 'MIT-BIH: the "
                             "balanced rule's tau on DS1 validation patients'")
    args = parser.parse_args()
    TAUS.extend(args.taus)
    SDS.extend(args.unconfirmed_sds)
    global CAPPED
    CAPPED = args.cap_floored
    args.section = args.section or ("MIT-BIH: the balanced rule's tau on DS1 validation patients" if TAUS
                                    else "MIT-BIH: the prior's floor for unconfirmed classes on DS1 validation "
                                         "patients" if SDS else "MIT-BIH: DP settings chosen on DS1 validation patients")
    table = []
    for config in args.configs:
        rows = [cross_validated(config, seed) for seed in args.seeds]
        for row in rows:
            print(json.dumps({"measure": "mitbih_validation", **row}), flush=True)
        table.extend(rows)
        if len(rows) > 1:
            numeric = [k for k, v in rows[0].items() if isinstance(v, float) and k != "seconds"]
            mean = {**{k: rows[0][k] for k in ("config", "batch", "lr", "rounds", "balanced_training")},
                    "seed": f"mean of {len(rows)}", **{k: statistics.mean(float(r[k]) for r in rows) for k in numeric}}
            print(json.dumps({"measure": "mitbih_validation_mean", **mean}), flush=True)
            table.append(mean)
    if TAUS or SDS:
        write_rule_section(args.section, [r for r in table if isinstance(r["seed"], int)])
        return
    columns = ["config", "seed", "batch", "lr", "rounds", "balanced_training", "argmax_macro_f1", "argmax_recall_S",
               "argmax_recall_V", "balanced_macro_f1", "balanced_recall_N", "balanced_recall_S", "balanced_recall_V",
               "balanced_recall_F", "seconds"]
    write_section(
        args.section, table, columns,
        notes="Federated DP (epsilon 3, record level), 4 hospitals of DS1 patients, 4 folds of patients held out in "
              "turn; scores over all 22 DS1 patients' held-out predictions. DS2 is never read. config: the settings "
              "changed from the task's defaults; balanced_training: class-weighted DP training on the hospital's "
              "noisy class histogram (common/class_prior.py). argmax / balanced: the decision rule (balanced: the "
              "server's rule on the run's DP class prior). One seed's spread is large (S beats come from a few "
              "patients): compare means.",
    )


def write_rule_section(section: str, rows: list[dict[str, object]]) -> None:
    """One row per decision rule (argmax, each tau, each floor): means over the seeds' runs, and the smaller of
    S and V recall."""
    table = []
    rules = ([("argmax", "argmax")] + [(f"tau{t:g}", f"tau {t:g}") for t in sorted(TAUS)]
             + [(f"sd{k:g}", f"task's tau, floor {k:g} sd") for k in sorted(SDS)]
             + [(f"sd{k:g}cap", f"task's tau, floor {k:g} sd, tau <= 1 on floored classes") for k in sorted(SDS) if CAPPED])
    for rule, label in rules:
        def of(key: str) -> list[float]:
            return [float(r[f"{rule}_{key}"]) for r in rows]  # type: ignore[arg-type]
        smaller = [min(s, v) for s, v in zip(of("recall_S"), of("recall_V"), strict=True)]
        table.append({"rule": label, "seeds": len(rows),
                      "macro_f1": statistics.mean(of("macro_f1")), "macro_f1_sd": statistics.stdev(of("macro_f1")),
                      **{f"recall_{c}": statistics.mean(of(f"recall_{c}")) for c in "NSVF"},
                      **({f"ppv_{c}": statistics.mean(of(f"ppv_{c}")) for c in "NSVF"} if SDS else {}),
                      **({"calls_Q": statistics.mean(of("calls_Q"))} if SDS else {}),
                      "smaller_of_S_V": statistics.mean(smaller), "smaller_of_S_V_worst_seed": min(smaller)})
    write_section(
        section, table, list(table[0]),
        notes="Federated DP (epsilon 3, record level), 4 hospitals of DS1 patients, 4 folds of patients held out in "
              "turn, the task's defaults; each seed's runs scored by argmax and by the balanced rule argmax_c log p_c "
              "- tau log prior_c on the run's DP class prior at each tau (the same runs, so the rows differ only in "
              "the rule); floor k sd: the task's tau on the run's summed histogram with each class's share at least "
              "k standard deviations of its summed noise over the total (common/class_prior.py prior_of); calls_Q: "
              "beats called Q (8 of DS1's beats are Q). Means over the seeds; smaller_of_S_V: min(S recall, V recall), the quantity issue 18's "
              "target bounds, its mean and its worst seed. DS2 is never read.",
    )


if __name__ == "__main__":
    main()
