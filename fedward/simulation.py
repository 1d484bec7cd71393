"""Run the ServerApp and ClientApp on one machine with Flower's simulation engine.

`flwr run .` reaches the same apps through a SuperLink; this front door runs them
in-process (Flower's `_run_simulation`, which the `flwr-simulation` runtime uses),
passing the run config in the ServerApp's Context, so a researcher gets one
command with flags and a direct error before any Ray worker starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from common.config import RunConfig


def run_simulation(config: RunConfig, hospitals: int, cpus_per_hospital: float, gpus_per_hospital: float) -> Path:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").propagate = False  # Flower has its own handler: no double lines
    import client.app
    import server.app

    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                      run_config=config.to_mapping())
    backend = {
        "client_resources": {"num_cpus": cpus_per_hospital, "num_gpus": gpus_per_hospital},
        "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": _gpus() if gpus_per_hospital else 0},
    }
    _run_simulation(
        num_supernodes=hospitals,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client.app.app,
        server_app=server.app.app,
        backend_name="ray",
        backend_config=backend,  # type: ignore[arg-type]
        server_app_context=context,
    )
    return Path(config.out_dir)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()
