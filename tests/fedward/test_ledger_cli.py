"""`fedward ledger show|export` and the hospital's privacy flags of `fedward supernode`."""

import csv
import json
from pathlib import Path

import pytest

from common.ledger import DatasetLine, PrivacyLedger
from common.privacy import epsilon_spent
from deploy.certs import hospital_keys, init_ca_and_server
from fedward.cli import main


def filled_ledger(path: Path) -> float:
    line = DatasetLine("cleveland", "d" * 64, 5.0, 1e-5)
    with PrivacyLedger(path) as ledger:
        for r in (1, 2):
            ledger.reserve(line, "run-1", r, 1.2, 0.1, 7)
        ledger.reserve(line, "run-2", 1, 0.9, 0.05, 20)
    return epsilon_spent([(1.2, 0.1, 7), (1.2, 0.1, 7), (0.9, 0.05, 20)], 1e-5)


def test_show_and_export_tell_budget_spent_and_each_run(tmp_path: Path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    spent = filled_ledger(ledger)
    assert main(["ledger", "show", "--ledger", str(ledger)]) == 0
    table = capsys.readouterr().out
    assert "dataset cleveland" in table and f"spent {spent:.3f}" in table and f"remaining {5 - spent:.3f}" in table
    assert main(["ledger", "show", "--ledger", str(ledger), "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    assert line["spent"] == pytest.approx(spent, abs=1e-9)
    assert [(r["run_id"], r["rounds"], r["steps"]) for r in line["runs"]] == [("run-1", [1, 2], 14), ("run-2", [1], 20)]
    assert line["runs"][1]["epsilon"] == pytest.approx(epsilon_spent([(0.9, 0.05, 20)], 1e-5))
    out = tmp_path / "ethics.csv"
    assert main(["ledger", "export", "--ledger", str(ledger), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["run_id"] for r in rows] == ["run-1", "run-2"]
    assert float(rows[0]["spent_total"]) == pytest.approx(spent, abs=1e-6)


def test_show_names_a_missing_or_foreign_ledger(tmp_path: Path, capsys):
    assert main(["ledger", "show", "--ledger", str(tmp_path / "none.sqlite")]) == 2
    assert "none.sqlite does not exist" in capsys.readouterr().err
    assert main(["ledger", "export", "--ledger", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "e.csv")]) == 2
    assert not (tmp_path / "e.csv").exists(), "no empty CSV for the ethics board"
    (tmp_path / "x.sqlite").write_text("not a ledger")
    assert main(["ledger", "show", "--ledger", str(tmp_path / "x.sqlite")]) == 2
    assert "is not a fedward privacy ledger" in capsys.readouterr().err


def test_supernode_passes_the_hospitals_privacy_settings_as_node_config(tmp_path: Path, capsys):
    init_ca_and_server(tmp_path / "certs", "localhost", ["127.0.0.1"])
    hospital_keys(tmp_path / "keys", "va")
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(tmp_path / "keys" / "va"), "--hospital", "va", "--data", str(tmp_path), "--dry-run",
            "--ledger", str(tmp_path / "ledger.sqlite")]
    assert main([*args, "--epsilon-budget", "8", "--run-epsilon-cap", "3"]) == 0
    command = capsys.readouterr().out
    assert f'privacy-ledger="{tmp_path / "ledger.sqlite"}"' in command and "epsilon-budget=8.0" in command
    assert (tmp_path / "ledger.sqlite").exists(), "the ledger is created (and checked) before connecting"
    assert main([*args, "--epsilon-budget", "-1"]) == 2
    assert "epsilon-budget=-1 must be > 0" in capsys.readouterr().err
    (tmp_path / "bad.sqlite").write_text("x" * 200)
    assert main([*args[:-1], str(tmp_path / "bad.sqlite")]) == 2
    assert "bad.sqlite is not a fedward privacy ledger" in capsys.readouterr().err


def test_supernode_with_only_a_data_path_keeps_a_default_ledger_and_says_so(tmp_path: Path, fedward_home: Path, capsys):
    """Issue 17.5: DP and a ledger by default, announced at start-up; simulation-only noise refused."""
    init_ca_and_server(tmp_path / "certs", "localhost", ["127.0.0.1"])
    hospital_keys(tmp_path / "keys", "va")
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(tmp_path / "keys" / "va"), "--hospital", "va", "--data", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    ledger = fedward_home / "privacy-ledger.sqlite"
    assert f'privacy-ledger="{ledger}"' in out and ledger.exists(), "the default ledger, named explicitly"
    assert "-m client.fast_supernode" in out and "-m client.warm_executor" in out, "what really runs, not stock Flower"
    assert "flower-supernode " not in out
    assert "DP required" in err and "epsilon-budget 10 (default)" in err and "run-epsilon-cap 3 per run and per 24 h (default)" in err
    assert main([*args, "--allow-no-dp", "--dataset-name", "va-cardiology", "--require-secure-aggregation"]) == 0
    out, err = capsys.readouterr()
    assert "allow-no-dp=true" in out and 'dataset-name="va-cardiology"' in out and "require-secure-aggregation=true" in out
    assert main([*args, "--node-config", "reproducible-noise=true"]) == 2
    assert "reproducible-noise=true is for simulation only" in capsys.readouterr().err
    assert main(["ledger", "show"]) == 0, "the runbook's `fedward ledger show` finds the SuperNode's default ledger"
    assert str(ledger) in capsys.readouterr().out


def test_show_lists_the_class_histogram_release_apart_from_the_training_rounds(tmp_path: Path, capsys):
    """A run that released its noisy class histogram (round -1, common/class_prior.py) trained 2 rounds, not 3;
    its noise column is the DP-SGD noise, and the release is named; the run's epsilon still counts it."""
    from common.class_prior import LEDGER_ROUND, histogram_entry

    path = tmp_path / "ledger.sqlite"
    line = DatasetLine("va", "e" * 64, 5.0, 1e-5)
    with PrivacyLedger(path) as ledger:
        ledger.reserve(line, "run-1", LEDGER_ROUND, *histogram_entry())
        for r in (1, 2):
            ledger.reserve(line, "run-1", r, 1.2, 0.1, 7)
    assert main(["ledger", "show", "--ledger", str(path), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)[0]["runs"]
    assert (run["rounds"], run["noise_multiplier"], run["steps"]) == ([1, 2], [1.2], 14)
    assert run["class_histogram_noise"] == histogram_entry()[0]
    assert run["epsilon"] == pytest.approx(epsilon_spent([histogram_entry(), (1.2, 0.1, 7), (1.2, 0.1, 7)], 1e-5))
    assert main(["ledger", "show", "--ledger", str(path)]) == 0
    table = capsys.readouterr().out
    row = next(t for t in table.splitlines() if t.strip().startswith("run-1"))
    assert row.split()[1:3] == ["2", "1.200"], table
    assert "class histogram released once" in table
    out = tmp_path / "ethics.csv"
    assert main(["ledger", "export", "--ledger", str(path), "--out", str(out)]) == 0
    (exported,) = list(csv.DictReader(out.open()))
    assert (exported["rounds"], exported["noise_multiplier"], exported["class_histogram_noise"]) == ("2", "1.2", "10.0")
