"""`--init-weights`: a run starts from the operator's checkpoint, or is refused naming what does not fit."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.tasks import get_task
from tests.conftest import PROJECT_ROOT


def simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedward", "simulate", "--hospitals", "2", "--rounds", "1",
                           "--no-dp", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_a_mismatched_or_corrupt_checkpoint_is_refused_naming_keys_before_anything_runs(tmp_path: Path):
    wrong = get_task("tabular").build_model((7,), 2, RunConfig(model="mlp")).state_dict()  # breast cancer has 30
    torch.save(wrong, tmp_path / "mlp7.pt")
    result = simulate("--init-weights", str(tmp_path / "mlp7.pt"), "--out", str(tmp_path / "run1"))
    assert result.returncode != 0
    assert "does not fit this run's model" in result.stderr and "unexpected: " in result.stderr, result.stderr
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    result = simulate("--init-weights", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "run2"))
    assert result.returncode != 0 and f"--init-weights {tmp_path / 'broken.pt'} is not a readable state dict" in result.stderr
    assert not (tmp_path / "run1" / "metrics.jsonl").exists() and not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_a_matching_checkpoint_is_where_the_run_starts_and_the_card_records_it(tmp_path: Path):
    """The real round loop over the real ClientApp, in this process (no Ray)."""
    from client.app import app
    from server.federation import run_federation
    from tests.inprocess_grid import InProcessGrid

    model = get_task("tabular").build_model((30,), 2, RunConfig())
    state = {k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()}
    np.savez(tmp_path / "start.npz", **{k: v.numpy() for k, v in state.items()})
    out = tmp_path / "run"
    config = RunConfig(num_server_rounds=1, dp=False, lr=1e-9, out_dir=str(out),
                       init_weights=str(tmp_path / "start.npz"))
    run_federation(InProcessGrid(app, [{"partition-id": i, "num-partitions": 2} for i in range(2)]), config)
    card = json.loads((out / "model_card.json").read_text())
    assert "epsilon" not in card["config"] and card["config"]["init-weights"] == str(tmp_path / "start.npz")
    assert card["init_weights"]["sha256"] == hashlib.sha256((tmp_path / "start.npz").read_bytes()).hexdigest()
    final = torch.load(out / "final_model.pt", weights_only=True)
    for key, value in final.items():  # one round at lr 1e-9: still the checkpoint's weights
        assert torch.allclose(value.float(), state[key], atol=1e-4), key
