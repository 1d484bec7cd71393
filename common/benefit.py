"""The benefit table: one row per hospital, the same at the hospital, in a shared reply and in the run's report.

A row holds the hospital's name, its train / held-out sizes, a status ("ok" or why there
are no figures), and on its own held-out split the scores of its local-only, the global
and its personalised model (simulation adds the pooled model, with and without DP), and
for the global and personalised models the difference to local-only with a paired
bootstrap 95% interval. Balanced accuracy and AUROC lead, accuracy beside them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MODELS = ("local_only", "global", "personalised")
POOLED = ("pooled", "pooled_dp")  # simulation only: the researcher holds all the data
COMPARED = ("global", "personalised")  # each against local-only, with a bootstrap interval
METRICS = ("balanced_accuracy", "auroc", "accuracy")
LABELS = {"local_only": "local-only", "global": "global", "personalised": "personalised",
          "pooled": "pooled", "pooled_dp": "pooled (DP)"}
METRIC_LABELS = {"balanced_accuracy": "bal.acc", "auroc": "AUROC", "accuracy": "accuracy"}
OK = "ok"
MAX_STATUS = 300


def score_key(model: str, metric: str) -> str:
    return f"{model}_{metric}"


def difference_keys(model: str, metric: str) -> tuple[str, str, str]:
    base = f"{model}_minus_local_{metric}"
    return base, f"{base}_low", f"{base}_high"


def score_keys(models: Iterable[str] = MODELS) -> list[str]:
    return [score_key(m, k) for m in models for k in METRICS]


def difference_columns() -> list[str]:
    return [key for m in COMPARED for k in METRICS for key in difference_keys(m, k)]


def columns(pooled: bool = False) -> list[str]:
    return ["hospital", "status", "n_train", "n_test", *score_keys(MODELS + (POOLED if pooled else ())),
            *difference_columns()]


SHARED_KEYS = frozenset(columns(pooled=False)) - {"hospital"}  # what a hospital with share-benefit=true sends


def shared_row(record: Mapping[str, Any], hospital: str) -> dict[str, Any]:
    """A benefit row as received in a reply, checked: known keys, numbers where numbers belong.
    Raises ValueError naming what is wrong."""
    unknown = sorted(set(record) - SHARED_KEYS)
    if unknown:
        raise ValueError(f"benefit record has unknown keys {unknown[:3]}")
    status = record.get("status")
    if not isinstance(status, str) or len(status) > MAX_STATUS:
        raise ValueError("benefit record needs a short text status")
    row: dict[str, Any] = {"hospital": hospital, "status": status}
    for key in ("n_train", "n_test"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"benefit record needs a whole {key} >= 0")
        row[key] = value
    for key in columns(pooled=True)[4:]:
        if key in record:
            value = record[key]
            if not isinstance(value, float | int) or isinstance(value, bool):
                raise ValueError(f"benefit record: {key} must be a number")
            row[key] = float(value)
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    pooled = any(score_key("pooled", "accuracy") in r for r in rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(pooled), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv(row.get(k)) for k in columns(pooled)})
    return path


def _csv(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table for people: per hospital one line per model; the global and personalised
    lines carry their difference to local-only with its 95% interval."""
    head = (f"{'hospital':<14} {'train/test':>10}  {'model':<13} {'bal.acc':>7} {'AUROC':>6} {'accuracy':>8}"
            "  vs local-only: bal.acc / AUROC / accuracy [95% CI]")
    lines = [head, "-" * len(head)]
    for row in rows:
        sizes = f"{row.get('n_train', '?')}/{row.get('n_test', '?')}"
        if row.get("status", OK) != OK:
            lines.append(f"{row['hospital']:<14} {sizes:>10}  {row['status']}")
            continue
        first = True
        for model in MODELS + POOLED:
            if score_key(model, "accuracy") not in row:
                continue
            name, size = (row["hospital"], sizes) if first else ("", "")
            scores = " ".join(f"{_num(row.get(score_key(model, k))):>{w}}" for k, w in zip(METRICS, (7, 6, 8),
                                                                                           strict=True))
            line = f"{name:<14} {size:>10}  {LABELS[model]:<13} {scores}"
            if model in COMPARED:
                line += "  " + " / ".join(_difference(row, model, k) for k in METRICS)
            lines.append(line)
            first = False
    return "\n".join(lines)


def _difference(row: Mapping[str, Any], model: str, metric: str) -> str:
    mid, low, high = (row.get(k) for k in difference_keys(model, metric))
    if mid is None or (isinstance(mid, float) and math.isnan(mid)):
        return "n/a"
    return f"{mid:+.3f} [{_signed(low)}, {_signed(high)}]"


def _num(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _signed(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"
