"""The privacy ledger on its own: arithmetic, bad files, SIGKILL durability, concurrency."""

import math
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from common.ledger import BudgetExceeded, DatasetLine, LedgerError, PrivacyLedger
from common.privacy import epsilon_spent
from tests.common.ledger_worker import STEP

ROOT = Path(__file__).resolve().parents[2]
LINE = DatasetLine("a" * 64, "ward-7", math.inf, 1e-5)


def worker(ledger: Path, sent: Path, budget: float, limit: int | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.common.ledger_worker", str(ledger), str(sent), str(budget)]
    return subprocess.Popen(args + ([str(limit)] if limit else []), cwd=ROOT)


def test_cumulative_epsilon_is_one_accountant_over_every_run(tmp_path: Path):
    runs = {"run-a": (1.1, 0.05, [40, 40]), "run-b": (0.8, 0.1, [25, 25, 25]), "run-c": (2.0, 0.02, [100])}
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        for run_id, (noise, rate, rounds) in runs.items():
            for r, steps in enumerate(rounds, 1):
                ledger.reserve(LINE, run_id, r, noise, rate, steps)
        spent = ledger.spent(LINE.fingerprint, LINE.delta)
    reference = RDPAccountant()
    reference.history = [(noise, rate, steps) for noise, rate, rounds in runs.values() for steps in rounds]
    assert spent == pytest.approx(reference.get_epsilon(LINE.delta), abs=1e-6)


def test_a_round_past_the_budget_is_refused_and_not_recorded(tmp_path: Path):
    line = DatasetLine("b" * 64, "ward-7", 1.0, 1e-5)
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        count = 0
        with pytest.raises(BudgetExceeded, match="budget 1"):
            while True:
                ledger.reserve(line, "run", count + 1, *STEP)
                count += 1
        assert len(ledger.charges(line.fingerprint)) == count > 0
        assert ledger.spent(line.fingerprint, line.delta) <= 1.0
        # the per-run cap binds before the budget does
        with pytest.raises(BudgetExceeded, match="per-run cap"):
            ledger.reserve(DatasetLine("c" * 64, "other", 100.0, 1e-5), "run", 1, 0.5, 0.1, 100, run_cap=0.5)


def test_a_file_that_is_not_a_ledger_is_refused_by_name(tmp_path: Path):
    text = tmp_path / "notes.sqlite"
    text.write_text("patient list\n" * 100)
    with pytest.raises(LedgerError, match=f"{text} is not a fedward privacy ledger"):
        PrivacyLedger(text)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE patients (id INTEGER)")
    with pytest.raises(LedgerError, match="another program"):
        PrivacyLedger(other)
    with pytest.raises(LedgerError, match="does not exist"):
        PrivacyLedger(tmp_path / "missing" / "l.sqlite")
    assert text.read_text().startswith("patient list"), "the file was not touched"


@pytest.mark.slow
def test_sigkill_never_leaves_less_spent_than_was_sent(tmp_path: Path):
    ledger, sent = tmp_path / "l.sqlite", tmp_path / "sent.log"
    rng = random.Random(7)
    Path(f"{ledger}.go").touch()
    for _ in range(4):
        before = len(sent.read_text().split()) if sent.exists() else 0
        proc = worker(ledger, sent, float("inf"))
        while (len(sent.read_text().split()) if sent.exists() else 0) == before:
            time.sleep(0.01)  # it imports torch first; kill it while it charges
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with PrivacyLedger(ledger) as db:
            assert db.integrity_ok()
            recorded = {c.id for c in db.charges(LINE.fingerprint.replace("a", "f"))}
        sent_ids = {int(line) for line in sent.read_text().split()} if sent.exists() else set()
        assert sent_ids <= recorded, "every update that left is in the ledger"
    assert len(sent_ids) > 10, "the workers charged many rounds between kills"


@pytest.mark.slow
def test_two_runs_at_once_cannot_overspend(tmp_path: Path):
    ledger = tmp_path / "l.sqlite"
    budget = 2.0
    fits = next(n for n in range(1, 10_000) if epsilon_spent([STEP] * (n + 1), 1e-5) > budget)
    procs = [worker(ledger, tmp_path / f"sent-{i}.log", budget) for i in range(2)]
    while not all(Path(f"{tmp_path}/sent-{i}.log.ready").exists() for i in range(2)):
        time.sleep(0.05)  # both have imported torch and wait for the start signal
    Path(f"{ledger}.go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with PrivacyLedger(ledger) as db:
        charges = db.charges("f" * 64)
        assert db.spent("f" * 64, 1e-5) <= budget
    assert len(charges) == fits, "exactly as many rounds as the budget allows, not one more"
    assert len({c.run_id for c in charges}) == 2, "both runs got rounds in"
