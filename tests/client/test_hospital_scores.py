"""What a hospital reports about a model on its held-out split must mean what it says."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, RecordDict

from client.app import app
from common.config import RunConfig
from common.tasks import get_task
from tests.client.test_client_app import message


def test_a_model_that_knows_nothing_scores_auroc_one_half(data_dir: Path, tmp_path: Path):
    """Prior correction leaves each record out of its own class prior, which lowers its own class a little:
    fine for decisions, but ranked it gave a constant model AUROC 0.0 (walkthrough: weak models 0.15-0.27,
    'worse than chance'). AUROC ranks the uncorrected scores."""
    config = RunConfig(data_path="", num_server_rounds=1)
    model = get_task("tabular").build_model((10,), 2, config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every patient gets probability 1/2
    node = {"data-path": str(data_dir / "heart_disease_uci" / "processed.cleveland.data"), "hospital": "cleveland",
            "privacy-ledger": str(tmp_path / "ledger.sqlite")}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    reply = app(message("evaluate", ArrayRecord(model.state_dict()), config, 1), context)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["auroc"] == 0.5
