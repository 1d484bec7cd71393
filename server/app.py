"""The ServerApp entry point named in pyproject.toml (`server.app:app`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.flower_latency import tighten_object_pull_backoff
from common.tasks import resolve
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    tighten_object_pull_backoff()  # replies' arrays: retry in 0.05 s, not 1 s
    config = resolve(RunConfig.from_mapping(dict(context.run_config)))
    run_federation(grid, config)
