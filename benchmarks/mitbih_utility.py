"""MIT-BIH arrhythmia, inter-patient: centralised vs federated, with and without DP.

    .venv/bin/python benchmarks/mitbih_utility.py [--rounds N] [--epsilons 0 3] [--normal-per-record 300]
        [--seeds 0 1 2] [--unit record|patient] [--methods centralised fedavg] [--section NAME]

The split is de Chazal et al. (2004)'s DS1 / DS2: 22 records train, 22 other
patients' records test, the 4 paced records left out, so no patient is on both
sides. Beats are read with fedward's own WFDB reader (both leads, MLII first, since
2026-12-02; lead 0 alone before; 0.5 s around each annotated R peak, AAMI classes
N/S/V/F/Q, plus each lead's difference from the patient's median beat and, as
constant channels, 5 RR and 2 shape features relative to the
patient's own beats; 3 RR channels before issue 18's change of 2026-12-01). To keep a run within minutes on
2 cores, the training side keeps at most `--normal-per-record` N beats per
record (chosen at random with a fixed seed) and every S, V, F and Q beat; the
test side keeps every beat of DS2.

- centralised: the task's default model on all the training beats, rounds x 1 epochs.
- FedAvg: 5 hospitals formed by patient (Flower Datasets' grouped natural
  partitioner over the 22 DS1 records: 5, 5, 5, 5 and 2 patients), `rounds`
  rounds of 1 local epoch, through the real round loop and ClientApp in process;
  each hospital holds back a quarter of its beats for its own evaluation.

Scores are on DS2 (never used to choose settings): accuracy, macro-F1 over the
5 classes, macro AUROC and each class's recall, with the accuracy of always
answering N beside them. Run defaults otherwise (the task's: class weighting on without
DP; under DP batch 128, lr 0.3 and class-weighted training on the DP class histogram). The beats are written to a temporary .npz
for the run and deleted. `--unit record` (default, the published rows) writes it
without patient ids, so DP protects each beat; `--unit patient` adds each beat's
patient (its record), so DP-SGD samples and clips whole patients (user-level DP).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import Partition, RunConfig  # noqa: E402
from common.data import Samples  # noqa: E402
from common.partition import partition_indices  # noqa: E402
from common.class_prior import adjust, per_class, prior_of  # noqa: E402
from common.tasks import get_task, load_data, resolve  # noqa: E402
from common.tasks.sequence_rnn.dataset import AAMI_CLASSES, read_record  # noqa: E402
from common.training import predict_proba, scores_of  # noqa: E402
from inprocess import federate, pooled_dp, virtual_hospitals  # noqa: E402
from report import write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "mitbih_arrhythmia"
DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201", "203", "205",
       "207", "208", "209", "215", "220", "223", "230")
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212", "213", "214", "219",
       "221", "222", "228", "231", "232", "233", "234")
HOSPITALS = 5
MEANED = ("accuracy", "macro_f1", "auroc", "always_N", "recall_N", "recall_S", "recall_V", "recall_F", "recall_Q",
          "ppv_N", "ppv_S", "ppv_V", "ppv_F", "ppv_Q")
CPU = torch.device("cpu")


def beats(records: tuple[str, ...], normal_per_record: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    for record in records:
        x, y = read_record(DATA / record)
        if normal_per_record:
            normal = np.flatnonzero(y == 0)
            drop = rng.permutation(normal)[normal_per_record:]
            keep = np.setdiff1d(np.arange(len(y)), drop)
            x, y = x[keep], y[keep]
        xs.append(x)
        ys.append(y)
        groups.append(np.full(len(y), record))
    return Samples(np.concatenate(xs), np.concatenate(ys), np.concatenate(groups))


def scores(model: torch.nn.Module, test: Samples, prior: np.ndarray | None = None,
           tau: float = 1.0, label: str = "") -> dict[str, float | str]:
    """DS2 scores of the model's decisions: argmax, or with `prior` the balanced rule on it at `tau`
    (common/class_prior.py); each class's recall (sensitivity) and positive predictivity."""
    proba = predict_proba(model, test.x, CPU)
    decided = adjust(proba, prior, tau) if prior is not None else proba
    result = scores_of(test.y, decided)
    both = per_class(test.y, decided)
    return {"rule": label or ("argmax" if prior is None else "balanced" if tau == 1 else f"balanced, tau {tau:g}"),
            "accuracy": result["accuracy"], "macro_f1": result["macro-f1"], "auroc": result["auroc"],
            "always_N": float((test.y == 0).mean()),
            **{f"recall_{c}": r for c, r in zip(AAMI_CLASSES, both["recall"], strict=True)},
            **{f"ppv_{c}": r for c, r in zip(AAMI_CLASSES, both["positive_predictivity"], strict=True)}}


def config_for(path: Path, rounds: int, epsilon: float, seed: int) -> RunConfig:
    return resolve(RunConfig(
        task="sequence-rnn", data_path=str(path), partition="natural", num_server_rounds=rounds,
        dp=epsilon > 0, epsilon=epsilon or 3.0, seed=seed, min_hospitals=HOSPITALS,
    ))


def centralised(config: RunConfig) -> list[dict[str, float | str]]:
    task, data = get_task(config.task), load_data(config)
    assert data.test is not None
    model = task.build_model(data.input_shape, data.num_classes, config)
    epochs = config.num_server_rounds
    dp = pooled_dp(config, data.train, epochs)
    task.train(model, data.train, data.num_classes, config.replace(local_epochs=epochs), dp, CPU, config.seed)
    return [scores(model, data.test)]  # no class-histogram release is charged here: argmax only


def federated(config: RunConfig) -> list[dict[str, float | str]]:
    """The run's model scored by argmax and, where the hospitals released their DP class
    histograms (DP runs), by the balanced rule on the prior in the model card: one run, two rows."""
    data = load_data(config)
    assert data.test is not None
    run = federate(config, virtual_hospitals(HOSPITALS))
    model = get_task(config.task).build_model(data.input_shape, data.num_classes, config)
    model.load_state_dict(run.weights)
    section = run.card["final_metrics"].get("class_prior")
    # argmax; the balanced rule as it was until 2026-12-07 (tau 1.25, no floor for the classes the noise could
    # hide); the task's tau without that floor; and the card's prior and tau, the rule the server decides by
    rules: list[tuple[str, np.ndarray | None, float]] = [("argmax", None, 1.0)]
    if section:
        tau, unfloored = section["tau"], prior_of(np.array(section["summed"]), len(section["hospitals"]), 0.0)
        rules += [(f"balanced, tau {t:g}, no floor", unfloored, t) for t in sorted({1.25, tau})]
        rules.append((f"balanced, tau {tau:g}", np.array(section["prior"]), tau))
    return [{**scores(model, data.test, prior, tau, label), "epsilon_spent": run.epsilon_max,
             **({"prior": [round(p, 4) for p in prior]} if prior is not None else {})}
            for label, prior, tau in rules]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=0, help="0: the task's default")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--methods", nargs="+", default=["centralised", "fedavg"])
    parser.add_argument("--normal-per-record", type=int, default=300, help="0: keep every N beat")
    parser.add_argument("--unit", choices=["record", "patient"], default="record",
                        help="the privacy unit of DP runs: each beat, or each patient's beats together")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds; the N beats kept are drawn once, with the first")
    parser.add_argument("--section", default="",
                        help="write the table under '## MIT-BIH inter-patient (DS1 train, DS2 test)<, SECTION>' "
                             "instead of replacing the main table (a partial rerun keeps the published one)")
    parser.add_argument("--write-npz", type=Path, default=None, metavar="PATH",
                        help="write the beat-level data set (DS1 to train, sites by patient; DS2 as its test split) "
                             "to PATH for `fedward simulate --data PATH --partition natural`, and exit")
    args = parser.parse_args()
    args.rounds = args.rounds or get_task("sequence-rnn").default_rounds
    data_seed = args.seeds[0]
    if not (DATA / "100.hea").exists():
        sys.exit(f"{DATA} holds no MIT-BIH records: set FEDWARD_DATA_DIR to the folder holding mitbih_arrhythmia/")
    train = beats(DS1, args.normal_per_record, data_seed)
    test = beats(DS2, 0, data_seed)
    if args.write_npz:  # beat-level DP (no `patients`): per patient MIT-BIH is far too small for DP-SGD
        np.savez(args.write_npz, x=train.x, y=train.y, groups=train.groups.astype(str), x_test=test.x, y_test=test.y)
        print(f"wrote {args.write_npz}: {len(train.y)} DS1 beats of {len(set(train.groups))} patients to train, "
              f"{len(test.y)} DS2 beats to test")
        return
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mitbih_ds1_ds2.npz"
        patients = {"patients": train.groups.astype(str)} if args.unit == "patient" else {}
        np.savez(path, x=train.x, y=train.y, groups=train.groups.astype(str), x_test=test.x, y_test=test.y,
                 **patients)
        parts = partition_indices(train, Partition("natural"), HOSPITALS, data_seed)
        print(json.dumps({"measure": "mitbih_split", "train_beats": np.bincount(train.y, minlength=5).tolist(),
                          "test_beats": np.bincount(test.y, minlength=5).tolist(),
                          "hospitals": [sorted(set(train.groups[p])) for p in parts]}), flush=True)
        for epsilon in args.epsilons:
            for method in args.methods:
                rows = []
                for seed in args.seeds:
                    config = config_for(path, args.rounds, epsilon, seed)
                    start = time.perf_counter()
                    results = centralised(config) if method == "centralised" else federated(config)
                    for result in results:
                        row = {"method": method, "epsilon": epsilon or "no DP", "seed": seed, **result,
                               "seconds": time.perf_counter() - start}
                        print(json.dumps({"measure": "mitbih_utility", **row}), flush=True)
                        rows.append(row)
                table.extend(rows)
                for rule in sorted({str(r["rule"]) for r in rows}):
                    same = [r for r in rows if r["rule"] == rule]
                    if len(same) < 2:
                        continue
                    summary = {"method": method, "epsilon": epsilon or "no DP", "seed": f"mean of {len(same)}",
                               "rule": rule, **{k: statistics.mean(r[k] for r in same) for k in MEANED},
                               **{f"{k}_sd": statistics.stdev(r[k] for r in same) for k in ("accuracy", "macro_f1")}}
                    print(json.dumps({"measure": "mitbih_utility_mean", **summary}), flush=True)
                    table.append(summary)
    counts = dict(zip(AAMI_CLASSES, np.bincount(train.y, minlength=5).tolist(), strict=True))
    test_counts = dict(zip(AAMI_CLASSES, np.bincount(test.y, minlength=5).tolist(), strict=True))
    write_section(
        "MIT-BIH inter-patient (DS1 train, DS2 test)" + (", DP per patient" if args.unit == "patient" else "")
        + (f", {args.section}" if args.section else ""),
        table,
        ["method", "epsilon", "seed", "rule", "accuracy", "accuracy_sd", "macro_f1", "macro_f1_sd", "auroc",
         "always_N", "recall_N", "recall_S", "recall_V", "recall_F", "recall_Q", "ppv_N", "ppv_S", "ppv_V",
         "ppv_F", "ppv_Q", "epsilon_spent", "seconds"],
        notes=f"the task's default sequence model (cnn-lstm since issue 18; LSTM hidden 32 before), {args.rounds} rounds of 1 local epoch (centralised: {args.rounds} epochs); "
              f"FedAvg over {HOSPITALS} hospitals formed by patient. Privacy unit of the DP rows: "
              + ("the patient (a step samples patients; each patient's mean gradient over at most "
                 "records-per-patient of its beats is clipped). " if args.unit == "patient" else
                 "the beat; per patient this is no guarantee (group privacy over 400-1700 beats, see "
                 "'Privacy unit of every DP benchmark row'). ")
              + f"Training beats (DS1, at most "
              f"{args.normal_per_record} N per record): {counts}; test beats (all of DS2): {test_counts}. "
              "always_N: accuracy of always answering N. No setting was chosen on DS2. Since 2026-12-01 (issue 18) "
              "each beat carries its difference from the patient's median beat and 7 constant channels relative to "
              "the patient's own beats (RR before, after, local rhythm, before / local, after / before; amplitude, "
              "distance from the median beat); from 2026-11-23 it carried 3 RR channels (before, after, local mean; "
              "relative to the patient's mean RR) (common/tasks/sequence_rnn/dataset.py). Since issue 18's second "
              "change (2026-12-02) the 7 channels hold 3 ln(ratio), and under DP the task's defaults are batch 128, "
              "lr 0.3, 10 rounds, with each hospital's training class-weighted on its own noisy class histogram "
              "(weights <= 1 after clipping; federated DP runs only: the centralised DP rows release no histogram "
              "and train unweighted); chosen on DS1 validation patients (benchmarks/mitbih_validation.py). "
              "Since issue 18's third change (2026-12-02) each beat carries both leads (MLII first, by name; the "
              "other lead, V1 in most records, and its difference from its own median beat as 2 more channels), "
              "chosen on DS1 validation patients too; under DP server momentum 0.5 since the same day. "
              "The waveform alone gave: centralised 0.393 / "
              "F1 0.159 / AUROC 0.605, FedAvg 0.606 / 0.234 / 0.626, centralised eps 3 0.572 / 0.188 / 0.508, "
              "FedAvg eps 3 0.790 / 0.226 / 0.639. rule: argmax, or (DP federated runs, balanced-decision=true) "
              "the balanced rule argmax_c log p_c - tau log prior_c (tau 1; 'balanced, tau X': the task's tau, "
              "balanced-tau, since 2026-12-07) on the hospitals' summed DP class histograms, each class's share "
              "at least 2 standard deviations of its summed noise over the total since 2026-12-07 ('no floor': "
              "without that, as before) "
              "(common/class_prior.py; each hospital's histogram + N(0, 10^2) per class, charged in its "
              "epsilon), scored on the same run's model; ppv: positive predictivity. Since session 8 the model is torch's LSTM with fedward's "
              "per-sample gradients (before: Opacus's DPLSTM, same function and initialisation scheme, 6-9x "
              "slower); seed 0 then gave centralised 0.783 / 0.395 / 0.838, FedAvg 0.665 / 0.272 / 0.651, "
              "centralised eps 3 0.822 / 0.288 / 0.775, FedAvg eps 3 0.727 / 0.269 / 0.728 (one seed each: the "
              "spread between seeds below is as large as these differences).",
    )


if __name__ == "__main__":
    main()
