"""The privacy ledger on its own: arithmetic, bad files, SIGKILL durability, concurrency,
budget lines named by the hospital (not by the data's content), per-run caps the server cannot dodge."""

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

from common.ledger import BudgetExceeded, DatasetLine, LedgerError, PrivacyLedger, RunLimits
from common.privacy import epsilon_spent
from tests.common.ledger_worker import STEP

ROOT = Path(__file__).resolve().parents[2]
LINE = DatasetLine("ward-7", "a" * 64, math.inf, 1e-5)


def worker(ledger: Path, sent: Path, budget: float, limit: int | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.common.ledger_worker", str(ledger), str(sent), str(budget)]
    return subprocess.Popen(args + ([str(limit)] if limit else []), cwd=ROOT)


def test_cumulative_epsilon_is_one_accountant_over_every_run(tmp_path: Path):
    runs = {"run-a": (1.1, 0.05, [40, 40]), "run-b": (0.8, 0.1, [25, 25, 25]), "run-c": (2.0, 0.02, [100])}
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        for run_id, (noise, rate, rounds) in runs.items():
            for r, steps in enumerate(rounds, 1):
                ledger.reserve(LINE, run_id, r, noise, rate, steps)
        spent = ledger.spent(LINE.name, LINE.delta)
    reference = RDPAccountant()
    reference.history = [(noise, rate, steps) for noise, rate, rounds in runs.values() for steps in rounds]
    assert spent == pytest.approx(reference.get_epsilon(LINE.delta), abs=1e-6)


def test_a_round_past_the_budget_is_refused_and_not_recorded(tmp_path: Path):
    line = DatasetLine("ward-7", "b" * 64, 1.0, 1e-5)
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
            ledger.reserve(DatasetLine("other", "c" * 64, 100.0, 1e-5), "run", 1, 0.5, 0.1, 100, run_cap=0.5)


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


# The version-1 schema, as fedward wrote it before budget lines were named by the hospital.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE datasets (fingerprint TEXT PRIMARY KEY, label TEXT NOT NULL,
    budget REAL NOT NULL, delta REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL REFERENCES datasets(fingerprint), run_id TEXT NOT NULL, round INTEGER NOT NULL,
    noise REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL, update_digest TEXT, created REAL NOT NULL);
CREATE INDEX charges_by_run ON charges (fingerprint, run_id, round);
INSERT INTO meta VALUES ('schema', 'fedward-privacy-ledger'), ('version', '1');
"""


def test_a_version_1_ledger_keeps_its_spending_when_the_data_file_changed(tmp_path: Path):
    """Issue 16.3 as found: one row edited gave `va` a second line with a fresh budget."""
    path = tmp_path / "l.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO datasets VALUES (?, 'va', 8, 1e-5, 1.0)", ("1" * 64,))
        db.execute("INSERT INTO datasets VALUES (?, 'va', 8, 1e-5, 2.0)", ("2" * 64,))  # the edited file
        for r in range(1, 6):
            db.execute("INSERT INTO charges (fingerprint, run_id, round, noise, sample_rate, steps, update_digest, "
                       "created) VALUES (?, 'run-1', ?, 1.0, 0.1, 50, NULL, ?)", ("1" * 64, r, float(r)))
        db.execute("INSERT INTO charges (fingerprint, run_id, round, noise, sample_rate, steps, update_digest, "
                   "created) VALUES (?, 'run-2', 1, 1.0, 0.1, 50, NULL, 9.0)", ("2" * 64,))
    expected = epsilon_spent([(1.0, 0.1, 50)] * 6, 1e-5)
    with PrivacyLedger(path) as ledger:
        (line,) = ledger.datasets()
        assert line.name == "va" and line.fingerprint == "2" * 64, "one line, its latest version"
        assert [v.fingerprint for v in ledger.versions("va")] == ["1" * 64, "2" * 64]
        assert ledger.spent("va", 1e-5) == pytest.approx(expected)
        assert ledger.spent("1" * 64, 1e-5) == pytest.approx(expected), "an old fingerprint still finds its line"
        with pytest.raises(BudgetExceeded, match="spent"):  # the old spending counts against the budget
            ledger.reserve(DatasetLine("va", "3" * 64, expected + 0.01, 1e-5), "run-3", 1, 1.0, 0.1, 50)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0] == "2"


def test_a_new_fedward_run_id_every_round_does_not_reset_the_per_run_cap(tmp_path: Path):
    """Issue 17.7: the cap binds what the hospital can tell apart, Flower's run id (and a window)."""
    line = DatasetLine("ward-7", "a" * 64, 100.0, 1e-5)
    step = (2.0, 0.05, 20)
    per_round = epsilon_spent([step], 1e-5)
    cap = 1.0
    fits = max(n for n in range(1, 100) if epsilon_spent([step] * n, 1e-5) <= cap)
    assert 1 <= fits < 5 and per_round < cap
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        for r in range(1, fits + 1):
            ledger.reserve(line, f"fresh-id-{r}", r, *step, flwr_run_id="77", limits=RunLimits(cap=cap))
        with pytest.raises(BudgetExceeded, match="per-run cap 1"):
            ledger.reserve(line, "fresh-id-x", fits + 1, *step, flwr_run_id="77", limits=RunLimits(cap=cap))
        # a new Flower run *and* a new fedward run id each round: the hospital's window still binds
        windowed = RunLimits(cap=cap, window_s=3600.0)
        other = DatasetLine("ward-8", "b" * 64, 100.0, 1e-5)
        for r in range(1, fits + 1):
            ledger.reserve(other, f"id-{r}", r, *step, flwr_run_id=f"flwr-{r}", limits=windowed)
        with pytest.raises(BudgetExceeded, match="last 1 h"):
            ledger.reserve(other, "id-x", 9, *step, flwr_run_id="flwr-x", limits=windowed)
        # without the window those would be separate runs: the window is what binds them
        ledger.reserve(other, "id-y", 9, *step, flwr_run_id="flwr-y", limits=RunLimits(cap=cap))


def test_a_resumed_run_continues_its_own_account(tmp_path: Path):
    """A resumed run has a new Flower run id and the same fedward run id: one run, one cap, one target."""
    line = DatasetLine("ward-7", "a" * 64, 100.0, 1e-5)
    step = (2.0, 0.05, 20)
    fits = max(n for n in range(1, 100) if epsilon_spent([step] * n, 1e-5) <= 1.0)
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        for r in range(1, fits):
            ledger.reserve(line, "study", r, *step, flwr_run_id="first", limits=RunLimits(target=1.0))
        ledger.reserve(line, "study", fits, *step, flwr_run_id="resumed", limits=RunLimits(target=1.0))
        assert len(ledger.run_charges("ward-7", "study", "resumed")) == fits
        # the server renames the run inside the resumed Flower run: still linked, still capped
        with pytest.raises(BudgetExceeded, match="run's own target 1"):
            ledger.reserve(line, "renamed", fits + 1, *step, flwr_run_id="resumed", limits=RunLimits(target=1.0))
        assert len(ledger.run_charges("ward-7", "renamed", "resumed")) == fits


def test_a_new_ledger_is_readable_by_its_owner_alone(tmp_path: Path):
    PrivacyLedger(tmp_path / "ledger.sqlite").close()
    assert (tmp_path / "ledger.sqlite").stat().st_mode & 0o777 == 0o600
