"""A hospital's own answer to "is our model better for joining?", computed and kept at the hospital.

After the last round (the evaluate message that carries the final global model) a
hospital whose node config says `benefit-report=true` trains, on its own training split
and without DP (neither model ever leaves the hospital):

- the local-only model: the run's model from scratch, the run's epochs budget
  (rounds x local epochs), its data alone;
- the personalised model: the local-only and the final global model, their class
  probabilities mixed w : 1 - w, w in {0, 1/4, 1/2, 3/4, 1} chosen on the training split
  alone by two-fold out-of-fold accuracy (client/personalise.py); never the held-out split;

scores them and the global model on its held-out split exactly as an evaluation does
(prior correction leave-one-out on the held-out split), with a paired bootstrap 95%
interval over the held-out records for each difference to local-only, and writes the
models (npz, no pickle) and the table (JSON, CSV) in its own folder. Only with
`share-benefit=true` do the scores (never the models) go back in the evaluate reply.

Node config (the hospital's, never the run's):

    benefit-report      true: compute the report after the last round (default false)
    benefit-dir         folder for the models and tables (default: `benefit/` beside the
                        privacy ledger, else $FEDWARD_HOME/benefit)
    share-benefit       true: send the table's scores with the final evaluation (default false)

It runs once per run (a repeated final evaluation gets the saved table again, nothing is
retrained) and costs one local-only training plus the choice of w (two half-data local
trainings: about one more).
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from scipy.stats import rankdata

from client.hospital import HospitalData, node_settings
from client.node_privacy import default_ledger
from client.personalise import WEIGHTS, Mixture, choose_weight, save_mixture
from common.benefit import COMPARED, METRICS, MODELS, OK, difference_keys, score_key, write_csv
from common.calibration import cross_fitted
from common.config import RunConfig
from common.errors import ConfigError
from common.metrics import auroc, classification_metrics
from common.tasks.base import Task
from common.training import local_epochs, predict_proba

MIN_HELD_OUT = 10  # fewer held-out records: a clear line in the table instead of figures
BOOTSTRAP = 1000
REPORT, TABLE = "benefit.json", "benefit.csv"
_DONE = "fedward-benefit"  # context.state: this Flower run's report
MODEL_FILES = {"local_only": "local_only.npz", "global": "global.npz", "personalised": "personalised.npz"}


@dataclass(frozen=True)
class BenefitSettings:
    report: bool
    share: bool
    folder: Path


def benefit_settings(node_config: Mapping[str, object]) -> BenefitSettings:
    report, share = _flag(node_config, "benefit-report"), _flag(node_config, "share-benefit")
    if "benefit-dir" in node_config:
        folder = Path(str(node_config["benefit-dir"])).expanduser()
    elif node_config.get("privacy-ledger"):
        folder = Path(str(node_config["privacy-ledger"])).expanduser().parent / "benefit"
    else:
        folder = default_ledger().parent / "benefit"
    if "personalise-epochs" in node_config:
        raise ConfigError("node config personalise-epochs is no longer used: the personalised model mixes the "
                          "local-only and the global model, the mix chosen on the training split; remove the key")
    return BenefitSettings(report, share, folder)


def _flag(node_config: Mapping[str, object], key: str) -> bool:
    value = node_config.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"node config {key}={value!r} must be true or false")
    return value


def is_last_evaluation(sent: Mapping[str, Any], config: RunConfig) -> bool:
    """The evaluate message after the last round carries the final global model."""
    try:
        return int(sent.get("server-round", 0)) >= config.num_server_rounds
    except (TypeError, ValueError):
        return False


def run_folder(settings: BenefitSettings, hospital: str, run_id: str) -> Path:
    return settings.folder / _safe(hospital) / _safe(run_id)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "_"


def benefit_report(
    task: Task, global_model: torch.nn.Module, config: RunConfig, hospital: HospitalData,
    settings: BenefitSettings, run_id: str, device: torch.device,
) -> dict[str, Any]:
    """The hospital's benefit row, computed once per run and kept in its folder."""
    folder = run_folder(settings, hospital.name, run_id)
    saved = folder / REPORT
    if saved.is_file():  # once per run: a repeated final evaluation learns nothing new
        return dict(json.loads(saved.read_text())["row"])
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    row: dict[str, Any] = {"hospital": hospital.name, "status": OK, "n_train": len(hospital.train),
                           "n_test": len(hospital.test)}
    details: dict[str, Any] = {}
    if not task.classifier:
        row["status"] = f"no benefit report: task {config.task} is not a classifier"
    elif len(hospital.test) < MIN_HELD_OUT:
        row["status"] = (f"too few held-out records ({len(hospital.test)}; the report needs at least {MIN_HELD_OUT}): "
                         "no figures. Give this hospital more data or a larger node config test-fraction "
                         "(fedward simulate: --test-fraction, or fewer --hospitals)")
    else:
        models, details = _train_models(task, global_model, config, hospital, device)
        for name, model in models.items():
            if isinstance(model, Mixture):
                save_mixture(model, folder / MODEL_FILES[name])
            else:
                save_model(model, folder / MODEL_FILES[name])
        row.update(score_models(models, config, hospital, task, device))
    report = {"row": row, "run_id": run_id, "written": time.strftime("%Y-%m-%d %H:%M:%S"), **details,
              "models": {k: v for k, v in MODEL_FILES.items() if (folder / v).exists()}}
    saved.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    write_csv(folder / TABLE, [row])
    return row


def _train_models(
    task: Task, global_model: torch.nn.Module, config: RunConfig, hospital: HospitalData, device: torch.device,
) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """Local-only (from scratch, the run's epochs budget, no DP) and personalised (local-only
    and global mixed, the mix chosen on the training split: client/personalise.py);
    returns them with the global one."""
    lr = task.default_lr if config.dp else config.lr  # DP's larger default step is for noisy gradients
    seed = (config.seed * 1_000_003 + zlib.crc32(hospital.name.encode())) % 2**31
    # the epochs this hospital trained over the run (more a round without DP where min-local-steps asks)
    budget = config.num_server_rounds * local_epochs(len(hospital.train), config)
    plain = config.replace(dp=False, lr=lr, strategy="fedavg", local_epochs=budget, min_local_steps=0)
    torch.manual_seed(seed)
    local = task.build_model(hospital.input_shape, hospital.num_classes, config)
    start = time.perf_counter()
    task.train(local, hospital.train, hospital.num_classes, plain, None, device, seed)
    local_seconds = time.perf_counter() - start
    start = time.perf_counter()
    choice = choose_weight(task, global_model, plain, hospital.train, hospital.num_classes, hospital.input_shape,
                           device, seed + 1)
    personalised = Mixture(local, global_model, choice.weight_local)
    details = {"local_only": {"epochs": budget, "lr": lr, "dp": False, "seconds": round(local_seconds, 2)},
               "personalised": {"weight_local": choice.weight_local, "chosen_by": choice.reason,
                                "training_split_scores": choice.scores, "candidates": list(WEIGHTS),
                                "seconds": round(time.perf_counter() - start, 2)},
               "prior_correction": config.prior_correction, "bootstrap": BOOTSTRAP}
    return {"local_only": local, "global": global_model, "personalised": personalised}, details


def held_out_proba(model: torch.nn.Module, config: RunConfig, hospital: HospitalData,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities on the held-out split as an evaluation decides with them (prior-corrected
    where the run says so) and as AUROC ranks them (uncorrected)."""
    proba = predict_proba(model, hospital.test.x, device)
    decided = cross_fitted(proba, hospital.test.y, hospital.num_classes) if config.prior_correction else proba
    return decided, proba


def score_models(models: Mapping[str, torch.nn.Module], config: RunConfig, hospital: HospitalData, task: Task,
                 device: torch.device) -> dict[str, float]:
    y = hospital.test.y
    both = {name: held_out_proba(model, config, hospital, device) for name, model in models.items()}
    probas, ranked = {k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}
    out: dict[str, float] = {}
    for name in MODELS:
        scores = classification_metrics(y, probas[name], ranked[name])
        out.update({score_key(name, k): float(scores[k.replace("_", "-")]) for k in METRICS})
    draws = np.random.default_rng(0).integers(0, len(y), (BOOTSTRAP, len(y)))
    for name in COMPARED:
        for metric in METRICS:
            mid, low, high = difference_keys(name, metric)
            out[mid] = out[score_key(name, metric)] - out[score_key("local_only", metric)]
            seen = ranked if metric == "auroc" else probas
            out[low], out[high] = paired_interval(y, seen[name], seen["local_only"], metric, draws)
    return out


def paired_interval(y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
                    draws: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval of metric(a) - metric(b) over the same resampled records
    (`draws`: one row of record indices per resample)."""
    diffs = resampled(y, a, metric, draws) - resampled(y, b, metric, draws)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < len(draws) // 2:  # e.g. AUROC with one class in most resamples
        return math.nan, math.nan
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def resampled(y: np.ndarray, proba: np.ndarray, metric: str, draws: np.ndarray) -> np.ndarray:
    """The metric on each resample, the same definitions as common.metrics (NaN where undefined)."""
    labels = y[draws]
    if metric == "auroc":
        if proba.shape[1] != 2:
            return np.array([auroc(y[i], proba[i]) for i in draws])
        ranks = rankdata(proba[:, 1][draws], axis=1)
        positive = labels == 1
        n1 = positive.sum(axis=1)
        n0 = labels.shape[1] - n1
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((ranks * positive).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    pred = proba.argmax(axis=1)[draws]
    if metric == "accuracy":
        return (pred == labels).mean(axis=1)
    recalls = []
    for c in np.unique(y):  # balanced accuracy: mean recall over the classes present in the resample
        mine = labels == c
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(mine.any(axis=1), ((pred == c) & mine).sum(axis=1) / mine.sum(axis=1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def save_model(model: torch.nn.Module, path: Path) -> None:
    """A plain state dict in an .npz (read back without pickle)."""
    state = {k.removeprefix("_module."): v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    np.savez(path, **state)  # type: ignore[arg-type]


def load_model(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    with np.load(path, allow_pickle=False) as saved:
        model.load_state_dict({k: torch.from_numpy(saved[k]) for k in saved.files}, strict=True)
    return model


def shared_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a hospital with share-benefit=true sends: the row's scores, no model."""
    return {k: v for k, v in row.items() if k != "hospital"}


def final_benefit(
    sent: Mapping[str, Any], context: Context, task: Task, global_model: torch.nn.Module,
    config: RunConfig, hospital: HospitalData, device: torch.device,
) -> dict[str, Any] | None:
    """At the last evaluation of a run, with benefit-report=true: the report, kept at the hospital.
    Returns what may be sent (share-benefit=true), else None.

    One report per Flower run (the node's context remembers it, whatever fedward run id or
    round a server names next) and per fedward run id (a resumed run gets the saved one)."""
    settings = benefit_settings(node_settings(context.node_config))
    if not settings.report or not is_last_evaluation(sent, config):
        return None
    done = context.state.config_records.get(_DONE)
    if done is not None:
        folder = Path(str(done["folder"]))
        row = dict(json.loads((folder / REPORT).read_text())["row"])
    else:
        run_id = str(sent.get("fedward-run-id", "run"))
        folder = run_folder(settings, hospital.name, run_id)
        row = benefit_report(task, global_model, config, hospital, settings, run_id, device)
        context.state.config_records[_DONE] = ConfigRecord({"folder": str(folder)})
    print(f"hospital {hospital.name}: benefit report in {folder}"
          + ("" if settings.share else " (not shared: share-benefit=false)"), flush=True)
    return shared_record(row) if settings.share else None
