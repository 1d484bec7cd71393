"""`fedward simulate --benefit` and `fedward benefit show`, as a researcher and a hospital run them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SITES = {"cleveland", "hungarian", "switzerland", "va"}


def fedward(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "RAY_DISABLE_IMPORT_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "fedward", *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_simulate_with_benefit_ends_with_the_table_and_each_hospital_can_print_its_own(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = fedward("simulate", "--data", str(data_dir / "heart_disease_uci"), "--hospitals", "4", "--partition",
                     "natural", "--rounds", "2", "--epsilon", "1", "--benefit", "--cpus-per-hospital", "1",
                     "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.split("== fedward summary ==")[1]
    assert "benefit per hospital" in summary
    card = json.loads((out / "model_card.json").read_text())["benefit"]
    assert {row["hospital"] for row in card["hospitals"]} == SITES
    with (out / "benefit.csv").open() as handle:
        table = {row["hospital"]: row for row in csv.DictReader(handle)}
    for name, row in table.items():
        assert row["status"] == "ok"
        for model in ("local-only", "global", "personalised", "pooled", "pooled (DP)"):
            assert model in summary
        # the summary's line for the hospital's personalised model carries the table's figures
        assert f"personalised  {float(row['personalised_balanced_accuracy']):>7.3f}" in summary, name
    assert len(list(csv.DictReader((out / "cross_site.csv").open()))) == 16
    assert (out / "benefit.png").stat().st_size > 0

    shown = fedward("benefit", "show", "--dir", str(out / "benefit" / "va"))
    assert shown.returncode == 0, shown.stderr
    assert f"{float(table['va']['local_only_accuracy']):.3f}" in shown.stdout
    assert "local-only: 2 epochs on this hospital's training split, no DP" in shown.stdout
    assert "the mix chosen on this hospital's training split only" in shown.stdout
    assert "cleveland" not in shown.stdout, "a hospital's folder shows its own table only"


def test_benefit_show_names_what_to_do_when_there_is_no_report(tmp_path: Path):
    shown = fedward("benefit", "show", "--dir", str(tmp_path))
    assert shown.returncode == 2
    assert "no benefit report there" in shown.stderr and "benefit-report=true" in shown.stderr


def test_benefit_show_prints_a_hospitals_clear_line_for_too_few_records(tmp_path: Path):
    """The table a hospital with a 5-record held-out split wrote (client/benefit.py), as it reads it."""
    from client.benefit import benefit_report, benefit_settings
    from client.hospital import HospitalData
    from common.config import RunConfig
    from common.data import Samples
    from common.tasks import get_task

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    hospital = HospitalData("tiny", Samples(x[:15], y[:15]), Samples(x[15:], y[15:]), 2, (3,), "f")
    config = RunConfig(data_path="", dp=False, lr=0.01)
    task = get_task("tabular")
    settings = benefit_settings({"benefit-report": True, "benefit-dir": str(tmp_path / "mine")})
    row = benefit_report(task, task.build_model((3,), 2, config), config, hospital, settings, "run-1",
                         torch.device("cpu"))
    assert row["status"].startswith("too few held-out records (5;")
    shown = fedward("benefit", "show", "--dir", str(tmp_path / "mine"))
    assert shown.returncode == 0, shown.stderr
    assert "tiny" in shown.stdout and "too few held-out records (5;" in shown.stdout


def test_no_pooled_model_when_no_hospital_has_figures_says_so(data_dir: Path, tmp_path: Path):
    """A small set (every hospital under 10 held-out records) said 'the hospitals are not this run's
    virtual ones', which was false."""
    import torch

    from common.config import RunConfig
    from common.tasks import get_task, resolve
    from server.benefit_simulation import add_simulation_rows

    config = resolve(RunConfig(data_path=str(data_dir / "heart_disease_uci"), partition="natural", dp=False))
    rows = [{"hospital": "cleveland", "status": "too few held-out records (7; the report needs at least 10)"}]
    extra = add_simulation_rows(rows, get_task("tabular"), config, tmp_path, "run", torch.device("cpu"))
    assert extra == {"simulation": "no pooled model or cross-site matrix: no hospital's benefit row has figures "
                                   "(each hospital's status says why)"}
