"""Shared fixtures: the real data folder (FEDWARD_DATA_DIR) and run-directory checks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _data_dir() -> Path | None:
    configured = os.environ.get("FEDWARD_DATA_DIR")
    candidate = Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(autouse=True)
def fedward_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FEDWARD_HOME per test: a real hospital's default privacy ledger lives there,
    and a test must neither write to the user's ~/.fedward nor inherit another test's spending."""
    home = tmp_path_factory.mktemp("fedward-home")
    monkeypatch.setenv("FEDWARD_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = _data_dir()
    if found is None:
        pytest.skip("real data folder absent: set FEDWARD_DATA_DIR to ../shared/data")
    return found


@pytest.fixture
def mitbih_subset(data_dir: Path, tmp_path: Path) -> Path:
    """A folder of links to four MIT-BIH records (nothing is copied)."""
    folder = tmp_path / "mitbih4"
    folder.mkdir()
    for record in ("100", "105", "119", "208"):
        for ext in ("hea", "dat", "atr"):
            (folder / f"{record}.{ext}").symlink_to(data_dir / "mitbih_arrhythmia" / f"{record}.{ext}")
    return folder


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_run_directory(run_dir: Path, rounds: int) -> dict:
    """The run directory a user is promised, with finite metrics; returns the model card."""
    rows = read_metrics(run_dir)
    assert {r["round"] for r in rows} == set(range(1, rounds + 1))
    hospitals = {r["hospital"] for r in rows} - {"all", "server"}
    assert hospitals, "no per-hospital rows"
    for row in rows:
        for key in ("round", "hospital", "split", "loss", "accuracy", "epsilon", "num_examples", "seconds"):
            assert key in row
        if row["split"] == "train":
            assert row["loss"] is None, f"an un-noised training loss left a hospital: {row}"
        else:
            assert row["loss"] is not None and math.isfinite(row["loss"]), row
            assert row["accuracy"] is not None and 0.0 <= row["accuracy"] <= 1.0, row
    for server_round in range(1, rounds + 1):
        splits = {(r["hospital"], r["split"]) for r in rows if r["round"] == server_round}
        assert ("all", "train") in splits and ("all", "evaluate") in splits
        assert (run_dir / "checkpoints" / f"round-{server_round:04d}.npz").is_file()
    assert (run_dir / "final_model.pt").is_file()
    assert (run_dir / "report.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    card = json.loads((run_dir / "model_card.json").read_text())
    assert set(card["hospitals"]) == hospitals
    assert len(card["code_sha256"]) == 64
    if card["differential_privacy"]["enabled"]:
        assert card["config"]["epsilon"] == card["differential_privacy"]["target_epsilon"]
    else:  # DP settings did not apply; the card must not suggest they did
        assert not {"epsilon", "delta", "max-grad-norm"} & set(card["config"]), card["config"]
    return card
