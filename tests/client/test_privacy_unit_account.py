"""The hospital's account uses the privacy unit its data names: patients where it names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import app
from client.hospital import hospital_data
from common.config import RunConfig
from common.ledger import PrivacyLedger
from common.training import batches_per_epoch
from fedward.cli import main
from tests.client.test_client_app import initial, message


def ward(path: Path, patients: bool) -> Path:
    """120 visits of 24 patients (5 each), two features and a label."""
    rng = np.random.default_rng(0)
    header = "age,bp,label" + (",patient" if patients else "")
    rows = [f"{40 + rng.integers(30)},{110 + rng.integers(40)},{i % 2}" + (f",p{i % 24}" if patients else "")
            for i in range(120)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("patients", [True, False], ids=["patient-ids", "no-ids"])
def test_the_ledger_accounts_per_patient_where_the_data_names_patients(tmp_path: Path, patients: bool, capsys):
    data = ward(tmp_path / "ward.csv", patients)
    ledger = tmp_path / "ledger.sqlite"
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                      node_config={"data-path": str(data), "hospital": "ward", "privacy-ledger": str(ledger),
                                   "epsilon-budget": 10.0, "delta": 1e-3})
    config = RunConfig(data_path="", num_server_rounds=2, batch_size=8, balanced_decision=False)  # steps only
    reply = app(message("train", initial(config, (2,), 2), config, 1), context)
    assert not reply.has_error(), reply.error
    unit = "patient" if patients else "record"
    assert reply.content["hospital"]["privacy-unit"] == unit
    assert reply.content["metrics"]["delta"] == 1e-3, "the hospital's delta, not the run's 1e-5"
    with PrivacyLedger(ledger) as book:
        (line,) = book.datasets()
        (charge,) = book.charges(line.name)
    assert line.unit == unit
    train = hospital_data(config, context.node_config).train
    units = len(np.unique(train.patients)) if patients else len(train)
    assert charge.sample_rate == 1 / batches_per_epoch(units, 8)  # the rate at which a step samples units
    if patients:
        assert units < len(train) and charge.sample_rate != 1 / batches_per_epoch(len(train), 8)
    capsys.readouterr()
    assert main(["ledger", "show", "--ledger", str(ledger)]) == 0
    assert f"epsilon per {unit}" in capsys.readouterr().out
