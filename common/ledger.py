"""A hospital's privacy ledger: every DP training round it ever released, in SQLite.

One ledger file can hold several datasets (one budget line each, keyed by a
content fingerprint). A round is *reserved* before training: in one IMMEDIATE
transaction the ledger recomputes the dataset's cumulative epsilon from its full
history with Opacus's RDP accountant, refuses the round if it would pass the
budget, and otherwise inserts it; the commit is fsync'd (synchronous=FULL)
before any update leaves. A reservation is only ever removed when the update it
was made for turned out to be bit-identical to one already released for the
same run and round (a resumed round replays it at no cost), so the ledger never
shows less spent than was sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import FedwardError
from common.privacy import History, epsilon_spent

SCHEMA = "fedward-privacy-ledger"
VERSION = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY, label TEXT NOT NULL,
    budget REAL NOT NULL, delta REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL REFERENCES datasets(fingerprint),
    run_id TEXT NOT NULL, round INTEGER NOT NULL,
    noise REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    update_digest TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS charges_by_run ON charges (fingerprint, run_id, round);
"""


class LedgerError(FedwardError):
    """The ledger file cannot be used (not a ledger, unreadable, newer version)."""


class BudgetExceeded(LedgerError):
    """A round would take a dataset's cumulative epsilon past its budget."""


@dataclass(frozen=True)
class Charge:
    id: int
    fingerprint: str
    run_id: str
    round: int
    noise: float
    sample_rate: float
    steps: int
    update_digest: str | None


@dataclass(frozen=True)
class DatasetLine:
    fingerprint: str
    label: str
    budget: float
    delta: float


class PrivacyLedger:
    """Open (or create) the ledger at `path`; refuse a file that is not one."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise LedgerError(f"privacy-ledger={self.path} is a folder; give a file path, e.g. {self.path}/ledger.sqlite")
        if not self.path.parent.is_dir():
            raise LedgerError(f"privacy-ledger={self.path}: folder {self.path.parent} does not exist; create it first")
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
            for statement in filter(str.strip, _TABLES.split(";")):
                self._db.execute(statement)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?), ('version', ?)", (SCHEMA, str(VERSION)))
            elif meta.get("schema") != SCHEMA:
                raise LedgerError(f"privacy-ledger={self.path} is not a fedward privacy ledger")
            elif int(meta.get("version", "0")) > VERSION:
                raise LedgerError(
                    f"privacy-ledger={self.path} was written by a newer fedward (version {meta['version']}); upgrade fedward"
                )

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
        rows = self._db.execute("SELECT fingerprint, label, budget, delta FROM datasets ORDER BY label").fetchall()
        return [DatasetLine(*row) for row in rows]

    def charges(self, fingerprint: str, run_id: str | None = None) -> list[Charge]:
        query = "SELECT id, fingerprint, run_id, round, noise, sample_rate, steps, update_digest FROM charges WHERE fingerprint = ?"
        args: tuple[str, ...] = (fingerprint,)
        if run_id is not None:
            query += " AND run_id = ?"
            args += (run_id,)
        return [Charge(*row) for row in self._db.execute(query + " ORDER BY id", args)]

    def spent(self, fingerprint: str, delta: float) -> float:
        return epsilon_spent(history_of(self.charges(fingerprint)), delta)

    # --------------------------------------------------------------- writing
    def reserve(
        self, line: DatasetLine, run_id: str, server_round: int,
        noise: float, sample_rate: float, steps: int, run_cap: float | None = None,
    ) -> Charge:
        """Record one round before training; BudgetExceeded if it would pass a budget."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?) ON CONFLICT(fingerprint) DO UPDATE "
                "SET label=excluded.label, budget=excluded.budget, delta=excluded.delta, updated=excluded.updated",
                (line.fingerprint, line.label, line.budget, line.delta, time.time()),
            )
            step = (noise, sample_rate, steps)
            past = self.charges(line.fingerprint)
            after = epsilon_spent([*history_of(past), step], line.delta)
            if after > line.budget:
                spent = epsilon_spent(history_of(past), line.delta)
                raise BudgetExceeded(
                    f"budget: round {server_round} of run {run_id} would take dataset {line.label!r} "
                    f"to epsilon {after:.3f} (spent {spent:.3f}, budget {line.budget:g}, delta {line.delta:g})"
                )
            if run_cap is not None:
                run_after = epsilon_spent([*history_of([c for c in past if c.run_id == run_id]), step], line.delta)
                if run_after > run_cap:
                    raise BudgetExceeded(
                        f"budget: round {server_round} would take run {run_id} on dataset {line.label!r} "
                        f"to epsilon {run_after:.3f}, past this hospital's per-run cap {run_cap:g}"
                    )
            cursor = self._db.execute(
                "INSERT INTO charges (fingerprint, run_id, round, noise, sample_rate, steps, update_digest, created) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (line.fingerprint, run_id, server_round, noise, sample_rate, steps, time.time()),
            )
            charge_id = int(cursor.lastrowid or 0)
        return Charge(charge_id, line.fingerprint, run_id, server_round, noise, sample_rate, steps, None)

    def settle(self, charge: Charge, update_digest: str) -> bool:
        """Attach the digest of the update about to be sent.

        If an earlier charge of the same run and round already released this very
        update (a resumed round replayed bit for bit), the new reservation is
        removed and False is returned: sending it again reveals nothing new.
        """
        with self._transaction():
            twin = self._db.execute(
                "SELECT id FROM charges WHERE fingerprint = ? AND run_id = ? AND round = ? AND update_digest = ? AND id != ?",
                (charge.fingerprint, charge.run_id, charge.round, update_digest, charge.id),
            ).fetchone()
            if twin is not None:
                self._db.execute("DELETE FROM charges WHERE id = ?", (charge.id,))
                return False
            self._db.execute("UPDATE charges SET update_digest = ? WHERE id = ?", (update_digest, charge.id))
            return True

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def history_of(charges: list[Charge]) -> History:
    return [(c.noise, c.sample_rate, c.steps) for c in charges]
