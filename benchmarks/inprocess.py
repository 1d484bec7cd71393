"""Shared by the utility benchmarks: a federation run in this process, and DP for one model.

`federate` drives the real round loop (server.federation) and the real ClientApp
through tests/inprocess_grid.py, in a throw-away run directory, and returns the
model card and the final weights. The scripts put the project root on
sys.path before importing it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client.app import app
from common.config import RunConfig
from common.privacy import DPState, calibrate_noise
from common.data import Samples
from common.training import dp_plan
from server.federation import run_federation
from tests.inprocess_grid import InProcessGrid


@dataclass(frozen=True)
class Run:
    card: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def epsilon_max(self) -> float:
        """The largest epsilon any hospital spent over the run."""
        return max(h["epsilon_spent"] or 0.0 for h in self.card["hospitals"].values())


def virtual_hospitals(count: int) -> list[dict[str, int]]:
    """Node configs of `count` simulated hospitals (the run's data set, partitioned)."""
    return [{"partition-id": i, "num-partitions": count} for i in range(count)]


def hospital_privacy(nodes: list[dict[str, Any]], folder: str) -> list[dict[str, Any]]:
    """What a real hospital's node config holds beside its data: its own ledger (in `folder`), a budget
    the benchmark never reaches, and (runs without DP) its consent to train without DP."""
    return [{"privacy-ledger": str(Path(folder) / f"ledger-{i}.sqlite"), "epsilon-budget": 1e6,
             "allow-no-dp": True, **node} for i, node in enumerate(nodes)]


def federate(config: RunConfig, nodes: list[dict[str, Any]]) -> Run:
    with tempfile.TemporaryDirectory() as out:
        if any("data-path" in node for node in nodes):  # real hospitals' node configs
            nodes = hospital_privacy(nodes, out)
        run_federation(InProcessGrid(app, nodes), config.replace(out_dir=out))
        card = json.loads((Path(out) / "model_card.json").read_text())
        weights = torch.load(Path(out) / "final_model.pt", map_location="cpu")
    return Run(card, weights)


def pooled_dp(config: RunConfig, train: Samples, epochs: int) -> DPState | None:
    """DP for one model trained on `train` for `epochs` epochs at the run's (epsilon, delta),
    per patient where `train` names patients; None without DP."""
    if not config.dp:
        return None
    plan = dp_plan(train, config.replace(local_epochs=epochs, num_server_rounds=1))
    noise = calibrate_noise(config.epsilon, config.delta, plan.sample_rate, plan.planned_steps)
    return DPState(noise, config.max_grad_norm, config.delta)
