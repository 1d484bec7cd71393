"""Clinical tables: the UCI heart-disease hospital files, a generic CSV, breast cancer.

Heart disease is cleaned as FLamby's Fed-Heart-Disease does: the mostly-missing
columns slope, ca and thal are dropped, then rows with any missing value; the
label is `num > 0`. Each `processed.<site>.data` file is one natural hospital.
Each row of these tables is one patient, so the privacy unit is the row; a CSV may
name each row's patient in a `patient` column, and DP then protects each patient's
rows together. Features are scaled row by row with public constants
(common/tasks/tabular/scaling.py), never with statistics of the data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data import Samples, TaskData, check_labels, skip_or_raise
from common.errors import DataError
from common.tasks.tabular.scaling import heart_scale, published_ranges, range_scale, signed_log

BUILTIN_BREAST_CANCER = "builtin:breast-cancer"
HEART_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
    "oldpeak", "slope", "ca", "thal", "num",
)
HEART_DROPPED = ("slope", "ca", "thal")
HEART_KEPT = tuple(c for c in HEART_COLUMNS[:-1] if c not in HEART_DROPPED)
HEART_GLOB = "processed.*.data"


def load_tabular(path: str, config: RunConfig) -> TaskData:
    if path == BUILTIN_BREAST_CANCER:
        return _breast_cancer()
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {path} does not exist; pass the folder or file of your table")
    if p.is_dir():
        files = sorted(p.glob(HEART_GLOB))
        if not files:
            raise DataError(
                f"{path}: no {HEART_GLOB} files in this folder; pass a heart-disease folder "
                "or a CSV file with a 'label' column"
            )
        parts = [read_heart_file(f) for f in files]
        return _table(
            heart_scale(np.concatenate([x for x, _, _ in parts]), HEART_KEPT),
            np.concatenate([y for _, y, _ in parts]),
            np.concatenate([g for _, _, g in parts]),
            path,
        )
    if p.suffix == ".csv":
        x, y, groups, patients = read_csv_table(p)
        return _table(signed_log(x), y, groups, path, patients)
    if p.name.startswith("processed.") and p.suffix == ".data":
        x, y, groups = read_heart_file(p)
        return _table(heart_scale(x, HEART_KEPT), y, groups, path)
    raise DataError(
        f"{path}: not a table fedward reads; pass a .csv with a 'label' column, a "
        f"heart-disease {HEART_GLOB} file, or a folder of them"
    )


def read_heart_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One UCI `processed.<site>.data` file, cleaned; groups = the site name."""
    keep = [i for i, c in enumerate(HEART_COLUMNS[:-1]) if c not in HEART_DROPPED]
    rows: list[list[float]] = []
    labels: list[int] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read this file ({err})") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(HEART_COLUMNS):
            skip_or_raise(DataError(
                f"{path}, line {number}: {len(cells)} columns, expected {len(HEART_COLUMNS)} "
                f"({', '.join(HEART_COLUMNS)})"
            ), "row", path)
            continue
        wanted = [cells[i] for i in keep] + [cells[-1]]
        if "?" in wanted:
            continue  # missing value: the row is dropped, as in FLamby
        try:
            values = [float(c) for c in wanted]
        except ValueError:
            skip_or_raise(DataError(f"{path}, line {number}: a cell is not a number ({line.strip()[:60]!r})"), "row", path)
            continue
        rows.append(values[:-1])
        labels.append(int(values[-1] > 0))
    if not rows:
        raise DataError(f"{path}: no complete rows; the file is empty or every row has '?'")
    site = path.name.split(".")[1]
    return (
        np.asarray(rows, dtype=np.float32),
        np.asarray(labels, dtype=np.int64),
        np.full(len(rows), site, dtype=object),
    )


def read_csv_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A CSV with a header, a 'label' column (0..C-1), optional 'hospital' and 'patient' columns;
    raw values (features, labels, sites, patients)."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if "label" not in header:
                raise DataError(
                    f"{path}: no 'label' column (columns: {', '.join(header) or 'none'}); "
                    "add a 'label' column of class numbers 0..C-1"
                )
            features = [c for c in header if c not in ("label", "hospital", "patient")]
            if not features:
                raise DataError(f"{path}: no feature columns besides 'label'")
            rows, labels, groups, patients = [], [], [], []
            for number, row in enumerate(reader, start=2):
                try:
                    values = [float(row[c]) for c in features]
                    label = int(float(row["label"]))
                    if not np.isfinite(values).all():
                        raise ValueError("not finite")
                except (TypeError, ValueError, OverflowError):
                    skip_or_raise(DataError(
                        f"{path}, line {number}: a cell is empty or not a number; "
                        "clean the file or drop the row (or set bad-files=skip)"
                    ), "row", path)
                    continue
                rows.append(values)
                labels.append(label)
                groups.append(row.get("hospital"))
                patients.append(row.get("patient"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read this CSV ({err})") from err
    if not rows:
        raise DataError(f"{path}: the table has a header but no rows")
    group_array = np.asarray(groups, dtype=object) if "hospital" in header else None
    patient_array = np.asarray(patients, dtype=object) if "patient" in header else None
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64), group_array, patient_array


def _breast_cancer() -> TaskData:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    low, high = published_ranges(bunch.DESCR, bunch.data.shape[1])
    return _table(
        range_scale(bunch.data, low, high), bunch.target.astype(np.int64), None,
        BUILTIN_BREAST_CANCER,
    )


def _table(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, source: str,
           patients: np.ndarray | None = None) -> TaskData:
    if not np.isfinite(x).all():
        raise DataError(f"{source}: the table holds NaN or infinite values")
    num_classes = max(2, int(y.max()) + 1)
    check_labels(y, num_classes, source)
    return TaskData(Samples(x, y, groups, patients), None, num_classes, source)
