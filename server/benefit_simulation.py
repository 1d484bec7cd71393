"""Simulation only: the pooled model and the cross-site matrix beside the hospitals' benefit rows.

A researcher's simulation holds all the data, so the server can do what no deployment
may: train one model on every virtual hospital's training split pooled (without DP,
and with DP at the run's epsilon and delta), score it on each hospital's held-out
split exactly as the hospital scores its own models, and score each hospital's
local-only model (kept by the virtual hospitals under RUN_DIR/benefit/) on every
other hospital's held-out split. The splits are the hospitals' own
(client.hospital.hospital_data with the same partition node config).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.benefit import MODEL_FILES, held_out_proba, load_model, run_folder, BenefitSettings
from client.hospital import HospitalData, hospital_data
from common.benefit import METRICS, OK, score_key
from common.config import RunConfig
from common.data import Samples
from common.metrics import classification_metrics
from common.privacy import DPState, calibrate_noise
from common.tasks.base import Task
from common.training import dp_plan, local_epochs

SIM_FOLDER = "benefit"  # RUN_DIR/benefit: where `fedward simulate --benefit` keeps the virtual hospitals' folders
CROSS_SITE = "cross_site.csv"


def simulated_hospitals(config: RunConfig) -> list[HospitalData]:
    count = config.min_hospitals
    return [hospital_data(config, {"partition-id": i, "num-partitions": count}) for i in range(count)]


def add_simulation_rows(
    rows: list[dict[str, Any]], task: Task, config: RunConfig, out_dir: Path, run_id: str, device: torch.device,
) -> dict[str, Any]:
    """Adds pooled / pooled_dp scores to `rows` (in place); returns the card's extra entries."""
    hospitals = simulated_hospitals(config)
    by_name = {h.name: h for h in hospitals}
    shared = [r for r in rows if r.get("status") == OK]
    if not shared:
        return {"simulation": "no pooled model or cross-site matrix: no hospital's benefit row has figures "
                              "(each hospital's status says why)"}
    if any(r["hospital"] not in by_name for r in shared):
        return {"simulation": "no pooled model or cross-site matrix: the hospitals are not this run's virtual ones"}
    patients = None if any(h.train.patients is None for h in hospitals) else \
        np.concatenate([h.train.patients for h in hospitals])  # type: ignore[misc]
    pooled = Samples(np.concatenate([h.train.x for h in hospitals]), np.concatenate([h.train.y for h in hospitals]),
                     patients=patients)  # DP protects patients where the data names them, as at the hospitals
    # the pooled data trained as one hospital over the run (more epochs a round without DP where min-local-steps asks)
    epochs = config.num_server_rounds * local_epochs(len(pooled), config)
    variants = {"pooled": None}
    if config.dp:
        plan = dp_plan(pooled, config.replace(local_epochs=epochs, num_server_rounds=1))
        noise = calibrate_noise(config.epsilon, config.delta, plan.sample_rate, plan.planned_steps)
        variants["pooled_dp"] = DPState(noise, config.max_grad_norm, config.delta)
    num_classes = hospitals[0].num_classes
    for name, dp in variants.items():
        lr = config.lr if dp is not None or not config.dp else task.default_lr
        torch.manual_seed(config.seed)
        model = task.build_model(hospitals[0].input_shape, num_classes, config)
        task.train(model, pooled, num_classes, config.replace(dp=dp is not None, lr=lr, strategy="fedavg",
                                                              local_epochs=epochs, min_local_steps=0),
                   dp, device, config.seed)
        for row in shared:
            scores = _scores(model, config, by_name[row["hospital"]], device)
            row.update({score_key(name, k): scores[k] for k in METRICS})
    matrix = cross_site(task, config, [by_name[r["hospital"]] for r in shared], out_dir, run_id, device)
    return {"pooled": {"epochs": epochs, "dp_epsilon": config.epsilon if config.dp else None},
            "cross_site": matrix}


def cross_site(task: Task, config: RunConfig, hospitals: list[HospitalData], out_dir: Path, run_id: str,
               device: torch.device) -> list[dict[str, Any]]:
    """Each hospital's local-only model on every hospital's held-out split (its own included)."""
    settings = BenefitSettings(True, True, out_dir / SIM_FOLDER)
    matrix = []
    for owner in hospitals:
        path = run_folder(settings, owner.name, run_id) / MODEL_FILES["local_only"]
        if not path.is_file():
            continue
        model = load_model(task.build_model(owner.input_shape, owner.num_classes, config), path)
        for other in hospitals:
            scores = _scores(model, config, other, device)
            matrix.append({"model_of": owner.name, "scored_on": other.name, "n_test": len(other.test),
                           **{k: scores[k] for k in METRICS}})
    if matrix:
        with (out_dir / CROSS_SITE).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["model_of", "scored_on", "n_test", *METRICS])
            writer.writeheader()
            writer.writerows(matrix)
    return matrix


def _scores(model: torch.nn.Module, config: RunConfig, hospital: HospitalData, device: torch.device) -> dict:
    scores = classification_metrics(hospital.test.y, *held_out_proba(model, config, hospital, device))
    return {k: float(scores[k.replace("_", "-")]) for k in METRICS}
