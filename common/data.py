"""Containers for one task's data, and the split of a hospital's data."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from common.errors import DataError


@dataclass(frozen=True)
class Samples:
    """Inputs, integer labels, and (optionally) each sample's natural site and its patient.

    `groups` is what `partition=natural` splits by (a hospital, or in MIT-BIH a record);
    `patients` says whose sample it is, where the data carries patient ids: then DP-SGD
    protects each patient's whole contribution (common/training.py), not each sample.
    """

    x: np.ndarray  # float32, (N, ...)
    y: np.ndarray  # int64, (N,)
    groups: np.ndarray | None = None  # str, (N,): the natural site (partition=natural)
    patients: np.ndarray | None = None  # str, (N,): the patient each sample belongs to

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} inputs but {len(self.y)} labels")
        if self.patients is not None and len(self.patients) != len(self.y):
            raise DataError(f"{len(self.y)} samples but {len(self.patients)} patient ids")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Samples:
        groups = None if self.groups is None else self.groups[index]
        patients = None if self.patients is None else self.patients[index]
        return Samples(self.x[index], self.y[index], groups, patients)


@dataclass(frozen=True)
class TaskData:
    """What a data path holds: samples for the hospitals, maybe a central test set."""

    train: Samples
    test: Samples | None
    num_classes: int
    source: str  # the path or name it was read from, for messages and model cards
    skipped: tuple[str, ...] = ()  # unreadable items left out (bad-files=skip), each with its reason
    validation: Samples | None = None  # a central validation split, for choosing settings (never test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    """Refuse labels outside 0..num_classes-1, naming the file."""
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{source}: labels must lie in 0..{num_classes - 1}, found "
            f"{int(y.min())}..{int(y.max())}; fix the label column or the class list"
        )


def subsample(samples: Samples, max_samples: int, seed: int) -> Samples:
    """At most `max_samples` samples, drawn stratified with a fixed seed (0 = all)."""
    if max_samples <= 0 or len(samples) <= max_samples:
        return samples
    index, _ = _split_index(samples.y, train_size=max_samples, seed=seed)
    return samples.take(np.sort(index))


def local_split(samples: Samples, test_fraction: float, seed: int) -> tuple[Samples, Samples]:
    """A hospital's own train / held-out split, stratified where the labels allow."""
    if len(samples) < 4:
        raise DataError(
            f"only {len(samples)} samples at this hospital: at least 4 are needed for a "
            "train and a held-out split; use fewer hospitals or more data"
        )
    train_idx, test_idx = _split_index(samples.y, test_size=test_fraction, seed=seed)
    return samples.take(train_idx), samples.take(test_idx)


def _split_index(
    y: np.ndarray, seed: int, train_size: int | None = None, test_size: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified where every class has two samples. Cached by the labels' bytes: a hospital
    splits the same labels for every message of a run, and sklearn's split costs ~2 ms."""
    return _split_cached(np.ascontiguousarray(y).tobytes(), y.dtype.str, seed, train_size, test_size)


@functools.lru_cache(maxsize=256)  # one entry per hospital a simulation worker serves
def _split_cached(
    labels: bytes, dtype: str, seed: int, train_size: int | None, test_size: float | None
) -> tuple[np.ndarray, np.ndarray]:
    y = np.frombuffer(labels, dtype=dtype)
    index = np.arange(len(y))
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        a, b = train_test_split(
            index, train_size=train_size, test_size=test_size, random_state=seed,
            stratify=stratify,
        )
    except ValueError:  # too few samples per class for a stratified split
        a, b = train_test_split(
            index, train_size=train_size, test_size=test_size, random_state=seed
        )
    a, b = np.asarray(a), np.asarray(b)
    a.setflags(write=False)  # shared by every caller
    b.setflags(write=False)
    return a, b


# ------------------------------------------------------------ bad items policy
_BAD_ITEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fedward_bad_items", default=None)


@contextlib.contextmanager
def bad_items_policy(skip: bool) -> Iterator[list[str]]:
    """While reading: skip unreadable items (collected in the yielded list) or stop.

    Readers call `skip_or_raise(error)` for an item (an image file, a WFDB record, a
    table row) they cannot use; with `skip=False` that raises the error, which
    names the item.
    """
    skipped: list[str] = []
    token = _BAD_ITEMS.set(skipped if skip else None)
    try:
        yield skipped
    finally:
        _BAD_ITEMS.reset(token)


def skip_or_raise(error: DataError, item: str = "item", source: str | Path | None = None) -> None:
    """Skip the bad `item` (a row, image, record) under bad-files=skip, else raise `error`.

    The error's public summary names only the kind of item and the data source's file
    name: what may leave the hospital (the message itself may quote the row)."""
    skipped = _BAD_ITEMS.get()
    if skipped is None:
        if not error.public:
            where = f" of {Path(source).name}" if source is not None else ""
            error.public = f"1 {item}{where} could not be read (bad-files=stop)"
        raise error
    skipped.append(str(error))
