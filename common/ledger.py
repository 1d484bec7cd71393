"""A hospital's privacy ledger: every DP training round it ever released, in SQLite.

One ledger file can hold several budget lines, one per data source the hospital
names (node config `dataset-name`, by default the hospital's name). The content
of the data does not name the line: a file that changes (a row edited, rows
added or reordered) is a new *version* of the same line, recorded with its
fingerprint for the audit trail, and the epsilon already spent carries over.

A round is *reserved* before training: in one IMMEDIATE transaction the ledger
recomputes the line's cumulative epsilon from its full history with Opacus's
RDP accountant, refuses the round if it would pass the budget or the per-run
cap, and otherwise inserts it; the commit is fsync'd (synchronous=FULL) before
any update leaves. A reservation is never removed: a round trained and not sent
stays counted (the ledger over-counts, never under). `settle` attaches the
digest of the update that was sent. A reservation left unsettled by an attempt
that was killed while training is what the same round, asked for again, trains
under (`retake`, once): nothing was released under it, so no second
charge. A round whose training failed with an error is marked (`abandon`) and
charged again if asked for: a failure the server sees may depend on the data.

A *run*, for the per-run cap, is what the hospital can tell apart itself: the
charges linked to this one by Flower's run id (from the message metadata) or
by fedward's run id (from the run config, kept across a resume), transitively;
and, where a cap window is set, every charge of the line made within the window,
whatever the server calls its runs. Schema version 2; a version-1 ledger (lines
keyed by a content fingerprint) is migrated in place on first open: its lines
with the same name become versions of one line.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import FedwardError
from common.privacy import History, epsilon_spent

SCHEMA = "fedward-privacy-ledger"
VERSION = 2
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, budget REAL NOT NULL, delta REAL NOT NULL, updated REAL NOT NULL,
    unit TEXT NOT NULL DEFAULT 'record');
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL REFERENCES datasets(name), fingerprint TEXT NOT NULL,
    first_used REAL NOT NULL, last_used REAL NOT NULL, PRIMARY KEY (name, fingerprint));
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL REFERENCES datasets(name), fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL, flwr_run_id TEXT, round INTEGER NOT NULL,
    noise REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    update_digest TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS charges_by_run ON charges (dataset, run_id, round);
CREATE TABLE IF NOT EXISTS evaluations (
    dataset TEXT NOT NULL, flwr_run_id TEXT, created REAL NOT NULL);
"""
# Version 1 -> 2: lines keyed by name (version 1's label); each old fingerprint a version.
_MIGRATE_V1 = """
ALTER TABLE datasets RENAME TO datasets_v1;
ALTER TABLE charges RENAME TO charges_v1;
DROP INDEX IF EXISTS charges_by_run;
{tables}
INSERT INTO datasets (name, budget, delta, updated)
    SELECT label, budget, delta, updated FROM datasets_v1 AS d
    WHERE updated = (SELECT MAX(updated) FROM datasets_v1 WHERE label = d.label)
    GROUP BY label;
INSERT INTO versions (name, fingerprint, first_used, last_used)
    SELECT d.label, d.fingerprint,
           COALESCE((SELECT MIN(created) FROM charges_v1 WHERE fingerprint = d.fingerprint), d.updated),
           COALESCE((SELECT MAX(created) FROM charges_v1 WHERE fingerprint = d.fingerprint), d.updated)
    FROM datasets_v1 AS d;
INSERT INTO charges (id, dataset, fingerprint, run_id, flwr_run_id, round, noise, sample_rate, steps,
                     update_digest, created)
    SELECT c.id, d.label, c.fingerprint, c.run_id, NULL, c.round, c.noise, c.sample_rate, c.steps,
           c.update_digest, c.created
    FROM charges_v1 AS c JOIN datasets_v1 AS d ON d.fingerprint = c.fingerprint;
DROP TABLE charges_v1;
DROP TABLE datasets_v1;
UPDATE meta SET value = '2' WHERE key = 'version'
"""
# update_digest of a round that has sent nothing (yet): never trained under again
ABANDONED = "none: training failed, nothing sent"
RETAKEN = "none yet: trained again after its attempt was killed"
_CHARGE_COLUMNS = "id, dataset, fingerprint, run_id, flwr_run_id, round, noise, sample_rate, steps, update_digest, created"


class LedgerError(FedwardError):
    """The ledger file cannot be used (not a ledger, unreadable, newer version)."""


class BudgetExceeded(LedgerError):
    """A round would take a line's cumulative epsilon past its budget, or a run past its cap."""


@dataclass(frozen=True)
class Charge:
    id: int
    dataset: str
    fingerprint: str
    run_id: str
    flwr_run_id: str | None
    round: int
    noise: float
    sample_rate: float
    steps: int
    update_digest: str | None
    created: float


@dataclass(frozen=True)
class DatasetLine:
    """One budget line. `name` is its key; `fingerprint` the data version in use (reading: the latest)."""

    name: str
    fingerprint: str
    budget: float
    delta: float
    unit: str = "record"  # what one guarantee protects: "patient" where the data names patients, else "record"


@dataclass(frozen=True)
class Version:
    fingerprint: str
    first_used: float
    last_used: float


@dataclass(frozen=True)
class RunLimits:
    """What one reservation may not pass besides the budget.

    `cap` binds the run (linked charges) together with every charge within
    `window_s` seconds; `target` (the run's own epsilon) binds the run alone.
    """

    cap: float | None = None
    window_s: float | None = None
    target: float | None = None


class PrivacyLedger:
    """Open (or create) the ledger at `path`; refuse a file that is not one."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise LedgerError(f"privacy-ledger={self.path} is a folder; give a file path, e.g. {self.path}/ledger.sqlite")
        if not self.path.parent.is_dir():
            raise LedgerError(f"privacy-ledger={self.path}: folder {self.path.parent} does not exist; create it first")
        if not self.path.exists():  # readable by the hospital's service account alone (SQLite's WAL files follow)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        deadline = time.monotonic() + timeout_s
        while True:
            self._db = None  # type: ignore[assignment]
            try:
                self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._init_schema()
                return
            except sqlite3.OperationalError as err:
                # Another process is creating or switching the same file to WAL right now:
                # SQLite answers "locked" without waiting on its busy handler. Try again.
                self._close_quietly()
                if "locked" not in str(err) and "busy" not in str(err):
                    raise self._not_a_ledger(err) from None
                if time.monotonic() > deadline:
                    raise LedgerError(f"privacy-ledger={self.path} stayed locked by another process for {timeout_s:g} s") from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as err:
                self._close_quietly()
                raise self._not_a_ledger(err) from None

    def _close_quietly(self) -> None:
        if self._db is not None:
            self._db.close()

    def _not_a_ledger(self, err: Exception) -> LedgerError:
        return LedgerError(
            f"privacy-ledger={self.path} is not a fedward privacy ledger ({err}); "
            "point privacy-ledger at the hospital's ledger or at a new file"
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- schema
    def _init_schema(self) -> None:
        with self._transaction():
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise LedgerError(
                    f"privacy-ledger={self.path} is an SQLite file of another program "
                    f"(tables: {', '.join(sorted(tables))}); give a new file or the hospital's ledger"
                )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall()) if tables else {}
            if meta and meta.get("schema") != SCHEMA:
                raise LedgerError(f"privacy-ledger={self.path} is not a fedward privacy ledger")
            version = int(meta.get("version", str(VERSION)))
            if version > VERSION:
                raise LedgerError(
                    f"privacy-ledger={self.path} was written by a newer fedward (version {meta['version']}); upgrade fedward"
                )
            if version == 1:
                self._run_script(_MIGRATE_V1.format(tables=_TABLES))
            self._run_script(_TABLES)
            if not meta:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?), ('version', ?)", (SCHEMA, str(VERSION)))

    def _run_script(self, script: str) -> None:
        for statement in filter(str.strip, script.split(";")):
            self._db.execute(statement)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: one writer at a time across processes; commit or roll back."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --------------------------------------------------------------- reading
    def datasets(self) -> list[DatasetLine]:
        """Every line, with the fingerprint of its latest version."""
        rows = self._db.execute(
            "SELECT d.name, COALESCE((SELECT fingerprint FROM versions v WHERE v.name = d.name "
            "ORDER BY last_used DESC LIMIT 1), ''), d.budget, d.delta, d.unit FROM datasets d ORDER BY d.name"
        ).fetchall()
        return [DatasetLine(*row) for row in rows]

    def versions(self, name: str) -> list[Version]:
        rows = self._db.execute(
            "SELECT fingerprint, first_used, last_used FROM versions WHERE name = ? ORDER BY first_used, fingerprint",
            (name,),
        )
        return [Version(*row) for row in rows]

    def _line_name(self, key: str) -> str:
        """A line's name from its name or from the fingerprint of one of its versions."""
        if self._db.execute("SELECT 1 FROM datasets WHERE name = ?", (key,)).fetchone():
            return key
        row = self._db.execute("SELECT name FROM versions WHERE fingerprint = ? LIMIT 1", (key,)).fetchone()
        return str(row[0]) if row else key

    def charges(self, line: str, run_id: str | None = None) -> list[Charge]:
        """The charges of a line (named, or by a version's fingerprint), optionally of one fedward run id."""
        query = f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE dataset = ?"
        args: tuple[str, ...] = (self._line_name(line),)
        if run_id is not None:
            query += " AND run_id = ?"
            args += (run_id,)
        return [Charge(*row) for row in self._db.execute(query + " ORDER BY id", args)]

    def run_charges(self, line: str, run_id: str, flwr_run_id: str | None) -> list[Charge]:
        """The charges of this run: linked by fedward's or Flower's run id, transitively."""
        charges = self.charges(line)
        runs, flwr_runs = {run_id}, ({flwr_run_id} if flwr_run_id is not None else set())
        linked: set[int] = set()
        grown = True
        while grown:
            grown = False
            for c in charges:
                if c.id not in linked and (c.run_id in runs or (c.flwr_run_id is not None and c.flwr_run_id in flwr_runs)):
                    linked.add(c.id)
                    runs.add(c.run_id)
                    if c.flwr_run_id is not None:
                        flwr_runs.add(c.flwr_run_id)
                    grown = True
        return [c for c in charges if c.id in linked]

    def spent(self, line: str, delta: float) -> float:
        return epsilon_spent(history_of(self.charges(line)), delta)

    # --------------------------------------------------------------- writing
    def reserve(
        self, line: DatasetLine, run_id: str, server_round: int,
        noise: float, sample_rate: float, steps: int, run_cap: float | None = None,
        flwr_run_id: str | None = None, limits: RunLimits | None = None,
    ) -> Charge:
        """Record one round before training; BudgetExceeded if it would pass a budget or cap.

        `run_cap` alone is `RunLimits(cap=run_cap)` (no window)."""
        limits = limits or RunLimits(cap=run_cap)
        now = time.time()
        with self._transaction():
            self._db.execute(
                "INSERT INTO datasets (name, budget, delta, updated, unit) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET budget=excluded.budget, delta=excluded.delta, "
                "updated=excluded.updated, unit=CASE WHEN datasets.unit = excluded.unit THEN datasets.unit "
                "ELSE 'record' END",  # a line whose rounds mixed units protects only records
                (line.name, line.budget, line.delta, now, line.unit),
            )
            self._db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?) ON CONFLICT(name, fingerprint) DO UPDATE "
                "SET last_used=excluded.last_used",
                (line.name, line.fingerprint, now, now),
            )
            step = (noise, sample_rate, steps)
            past = self.charges(line.name)
            after = epsilon_spent([*history_of(past), step], line.delta)
            if after > line.budget:
                spent = epsilon_spent(history_of(past), line.delta)
                raise BudgetExceeded(
                    f"budget: round {server_round} of run {run_id} would take dataset {line.name!r} "
                    f"to epsilon {after:.3f} (spent {spent:.3f}, budget {line.budget:g}, delta {line.delta:g})"
                )
            run = self.run_charges(line.name, run_id, flwr_run_id)
            if limits.target is not None:
                run_after = epsilon_spent([*history_of(run), step], line.delta)
                if run_after > limits.target * (1 + 1e-9):
                    raise BudgetExceeded(
                        f"budget: round {server_round} would take run {run_id} on dataset {line.name!r} "
                        f"to epsilon {run_after:.3f}, past the run's own target {limits.target:g}"
                    )
            if limits.cap is not None:
                ids = {c.id for c in run}
                if limits.window_s:
                    ids |= {c.id for c in past if c.created >= now - limits.window_s}
                capped = [c for c in past if c.id in ids]
                run_after = epsilon_spent([*history_of(capped), step], line.delta)
                if run_after > limits.cap:
                    window = f" and the last {limits.window_s / 3600:g} h" if limits.window_s else ""
                    raise BudgetExceeded(
                        f"budget: round {server_round} would take run {run_id}{window} on dataset {line.name!r} "
                        f"to epsilon {run_after:.3f}, past this hospital's per-run cap {limits.cap:g}"
                    )
            cursor = self._db.execute(
                "INSERT INTO charges (dataset, fingerprint, run_id, flwr_run_id, round, noise, sample_rate, steps, "
                "update_digest, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (line.name, line.fingerprint, run_id, flwr_run_id, server_round, noise, sample_rate, steps, now),
            )
            charge_id = int(cursor.lastrowid or 0)
        return Charge(charge_id, line.name, line.fingerprint, run_id, flwr_run_id, server_round,
                      noise, sample_rate, steps, None, now)

    def retake(self, line: str, run_id: str, server_round: int, step: tuple[float, float, int]) -> Charge | None:
        """The run's reservation of the round that was never settled (its attempt died before anything
        left) and charged exactly `step`, taken over by the caller, once: it is marked RETAKEN until
        settled, so a round whose attempts keep dying is charged anew from the second death on. Only the
        holder of the round's attempt lock may call this (client/sent_rounds.py): then the attempt that
        reserved it has ended."""
        with self._transaction():
            rows = self._db.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE dataset = ? AND run_id = ? AND round = ? "
                "AND update_digest IS NULL ORDER BY id DESC",
                (self._line_name(line), run_id, server_round),
            ).fetchall()
            for charge in (Charge(*row) for row in rows):
                if (charge.noise, charge.sample_rate, charge.steps) == step:
                    self._db.execute("UPDATE charges SET update_digest = ? WHERE id = ?", (RETAKEN, charge.id))
                    return charge
        return None

    def abandon(self, charge: Charge) -> None:
        """A round whose training failed (an error, not a kill): it stays charged and is never trained
        under again, since whether training fails may depend on the data and the server sees it."""
        with self._transaction():
            self._db.execute("UPDATE charges SET update_digest = ? WHERE id = ?", (ABANDONED, charge.id))

    def settle(self, charge: Charge, update_digest: str) -> None:
        """Attach the digest of the update about to be sent (the audit trail of what left)."""
        with self._transaction():
            self._db.execute("UPDATE charges SET update_digest = ? WHERE id = ?", (update_digest, charge.id))

    def count_evaluation(self, line: str, most: int, window_s: float, flwr_run_id: str | None) -> int | None:
        """Record one evaluation answered from this line's held-out data and return how many came
        before it; None (and nothing recorded) if `most` were already answered within `window_s`
        seconds (0: ever). Evaluations are not DP: this bounds them across runs and restarts."""
        now = time.time()
        with self._transaction():
            since = now - window_s if window_s > 0 else float("-inf")
            (done,) = self._db.execute(
                "SELECT COUNT(*) FROM evaluations WHERE dataset = ? AND created >= ?", (line, since)).fetchone()
            if done >= most:
                return None
            self._db.execute("INSERT INTO evaluations VALUES (?, ?, ?)", (line, flwr_run_id, now))
        return int(done)

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def history_of(charges: list[Charge]) -> History:
    return [(c.noise, c.sample_rate, c.steps) for c in charges]
