"""What a hospital sent for each (budget line, run, round), kept beside its privacy ledger.

With secret DP randomness a retrained round is a new release that would spend
privacy again, so a round the server asks for again (a resumed run) is answered
with exactly what was sent the first time, from here, without training and
without a charge. Each round is two files in `<ledger>.sent/<line-and-run>/`:
`round-NNNNNN.npz` (the arrays, numpy's own format) and `round-NNNNNN.json`
(key order, metrics, the update's digest); nothing is pickled. Files are
written to a temporary name, fsync'd and renamed, so a copy is whole or absent;
a copy whose arrays do not match its digest is ignored. The folder name is a
hash: run ids come from the server and never become paths.

Only plain rounds are kept. A round sent under secure aggregation is never sent
again as it was (re-sending it to another subset of hospitals would let the
server subtract sums and isolate it), so its replay trains anew and is charged.
The newest `KEEP` rounds of each run are kept (a resume replays the one round
that was in flight); an older round asked for again is trained and charged.

Each attempt at a round holds an exclusive lock on `round-NNNNNN.lock` from its
reservation until its update is settled (`hold`). The kernel drops the lock when
the process ends, however it ends (SIGKILL included), so a reservation that is
unsettled while nobody holds its lock belongs to an attempt that ended before
anything left: the round asked for again may train under it (`client/privacy_state.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

KEEP = 3


@dataclass(frozen=True)
class SentRound:
    arrays: ArrayRecord
    metrics: dict[str, int | float]


def update_digest(arrays: ArrayRecord) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays.keys()):
        values = arrays[key].numpy()
        digest.update(key.encode() + b"\0" + str(values.dtype).encode() + str(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


class SentRounds:
    def __init__(self, ledger: str | Path, line: str, run_id: str) -> None:
        key = hashlib.sha256(f"{line}\0{run_id}".encode()).hexdigest()[:32]
        self.folder = Path(f"{ledger}.sent") / key
        self.line, self.run_id = line, run_id

    def _paths(self, server_round: int) -> tuple[Path, Path]:
        stem = self.folder / f"round-{server_round:06d}"
        return stem.with_suffix(".npz"), stem.with_suffix(".json")

    def load(self, server_round: int) -> SentRound | None:
        arrays_path, meta_path = self._paths(server_round)
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = ArrayRecord({k: Array(np.array(stored[f"a{i}"])) for i, k in enumerate(meta["keys"])})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # absent or damaged: the round is trained and charged anew
        if meta.get("line") != self.line or meta.get("run") != self.run_id or update_digest(arrays) != meta.get("digest"):
            return None
        return SentRound(arrays, dict(meta["metrics"]))

    def save(self, server_round: int, arrays: ArrayRecord, metrics: dict[str, int | float], digest: str) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the hospital's own, like its ledger
        arrays_path, meta_path = self._paths(server_round)
        keys = list(arrays.keys())
        with _atomic(arrays_path) as handle:
            np.savez(handle, **{f"a{i}": arrays[k].numpy() for i, k in enumerate(keys)})
        meta = {"line": self.line, "run": self.run_id, "round": server_round, "keys": keys,
                "digest": digest, "metrics": metrics}
        with _atomic(meta_path) as handle:
            handle.write(json.dumps(meta).encode())
        _fsync_dir(self.folder)
        self._prune()

    def hold(self, server_round: int) -> Attempt | None:
        """This process's exclusive hold on an attempt at the round, or None where a live attempt has it."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / f"round-{server_round:06d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return Attempt(fd)

    def _prune(self) -> None:
        rounds = sorted(self.folder.glob("round-*.json"))
        for old in rounds[:-KEEP]:
            old.with_suffix(".npz").unlink(missing_ok=True)
            old.with_suffix(".lock").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


class Attempt:
    """A held attempt lock; `release` once the round's update is settled or the attempt gives up."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


class _atomic:
    """Write to `path.tmp`, fsync, rename over `path`."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.handle = self.tmp.open("wb")
        return self.handle

    def __exit__(self, kind, *rest) -> None:  # type: ignore[no-untyped-def]
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
