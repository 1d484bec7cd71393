"""The run's benefit table, from what hospitals chose to share: benefit.csv, the card's `benefit`, a panel.

A hospital with `benefit-report=true` and `share-benefit=true` in its node config sends
its benefit row (client/benefit.py) as a ConfigRecord `benefit` in its final evaluate
reply. Rows are checked (known keys, numbers where numbers belong); a malformed one is
set aside naming the hospital. Hospitals that shared nothing get a line saying so: their
table, if any, is at the hospital (`fedward benefit show` there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from flwr.app import Message  # noqa: E402

from common.benefit import (COMPARED, METRICS, MODELS, OK, POOLED, difference_keys, format_table,  # noqa: E402
                            score_key, shared_row, write_csv)
from server.screening import Rejection, hospital_of  # noqa: E402

CSV, PANEL = "benefit.csv", "benefit.png"
NOT_SHARED = "no figures shared (the hospital's node config: benefit-report / share-benefit off); see its own table"


def shared_rows(replies: list[Message]) -> tuple[dict[str, dict[str, Any]], list[Rejection]]:
    """The benefit rows in these evaluate replies, by hospital, and the malformed ones set aside."""
    rows: dict[str, dict[str, Any]] = {}
    rejected: list[Rejection] = []
    for msg in replies:
        if msg.has_error() or "benefit" not in msg.content.config_records:
            continue
        hospital = hospital_of(msg)
        try:
            rows[hospital] = shared_row(dict(msg.content.config_records["benefit"]), hospital)
        except ValueError as err:
            rejected.append(Rejection(hospital, str(err)))
    return rows, rejected


def table_rows(rows: dict[str, dict[str, Any]], hospitals: list[str]) -> list[dict[str, Any]]:
    """One row per hospital of the run, a shared one or a line saying nothing was shared."""
    names = sorted(set(hospitals) | set(rows))
    return [rows.get(name) or {"hospital": name, "status": NOT_SHARED} for name in names]


def card_section(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card's `benefit`: per hospital its row, and the mean over hospitals with figures."""
    with_figures = [r for r in rows if r.get("status") == OK]
    keys = [score_key(m, k) for m in MODELS + POOLED for k in METRICS] + \
        [difference_keys(m, k)[0] for m in COMPARED for k in METRICS]
    mean = {k: _mean([r.get(k) for r in with_figures]) for k in keys if any(k in r for r in with_figures)}
    return {"hospitals": [{k: _finite(v) for k, v in r.items()} for r in rows], "mean_over_hospitals": mean,
            "hospitals_with_figures": len(with_figures),
            **{k: [{c: _finite(v) for c, v in cell.items()} for cell in v] if k == "cross_site" else v
               for k, v in (extra or {}).items()}}


def _finite(value: Any) -> Any:
    """NaN (e.g. AUROC on a one-class held-out split) as null: the card stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _mean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def write_benefit(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(out_dir / CSV, rows)
    write_panel(out_dir / PANEL, rows)
    print("benefit per hospital (held-out split; differences to local-only with a bootstrap 95% interval):\n"
          + format_table(rows), flush=True)


def write_panel(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Balanced accuracy and AUROC per hospital and model, with each hospital's n."""
    models = [m for m in MODELS + POOLED if any(score_key(m, "accuracy") in r for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(models), 1)
    for axis, metric, title in zip(axes, ("balanced_accuracy", "auroc"), ("Balanced accuracy", "AUROC"),
                                   strict=True):
        for i, model in enumerate(models):
            values = [r.get(score_key(model, metric), math.nan) for r in rows]
            axis.bar([x + i * width for x in range(len(rows))], values, width, label=model.replace("_", "-"))
        axis.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(rows))])
        axis.set_xticklabels([f"{r['hospital']}\nn={r.get('n_test', '?')}" for r in rows], fontsize=7)
        axis.set(title=f"{title} on each hospital's held-out split", ylim=(0, 1))
        axis.grid(alpha=0.3, axis="y")
    if models:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
