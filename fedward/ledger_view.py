"""`fedward ledger show|export`: what a hospital's privacy ledger says, for people.

Per dataset line (named by the hospital, `dataset-name`): budget, spent (Opacus
RDP over the whole history at the line's delta), remaining; its data versions
(content fingerprints, first and last used: a changed file is a new version of
the same line, not a new budget); per run: its rounds, noise, sample rate, steps
and the epsilon of that run alone (runs compose to less than the sum of their
epsilons). A run's one release of its noisy class histogram (common/class_prior.py, ledger
round -1) is counted in its epsilon and listed apart, not as a training round.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from common.class_prior import LEDGER_ROUND
from common.errors import FedwardError
from common.ledger import PrivacyLedger, history_of
from common.privacy import epsilon_spent


def summary(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FedwardError(f"--ledger {path} does not exist; give the ledger your SuperNode uses (its --ledger, "
                           "or node config privacy-ledger; without either, $FEDWARD_HOME/privacy-ledger.sqlite)")
    out = []
    with PrivacyLedger(path) as ledger:
        for line in ledger.datasets():
            charges = ledger.charges(line.name)
            spent = epsilon_spent(history_of(charges), line.delta)
            runs = []
            for run_id in dict.fromkeys(c.run_id for c in charges):
                mine = [c for c in charges if c.run_id == run_id]
                trained = [c for c in mine if c.round != LEDGER_ROUND]
                released = [c.noise for c in mine if c.round == LEDGER_ROUND]
                runs.append({
                    "run_id": run_id,
                    "rounds": sorted({c.round for c in trained}),
                    "noise_multiplier": sorted({round(c.noise, 6) for c in trained}),
                    "sample_rate": sorted({round(c.sample_rate, 6) for c in trained}),
                    "flower_runs": sorted({c.flwr_run_id for c in mine if c.flwr_run_id}),
                    "steps": sum(c.steps for c in trained),
                    "class_histogram_noise": released[0] if released else None,
                    "epsilon": epsilon_spent(history_of(mine), line.delta),
                })
            versions = [{"fingerprint": v.fingerprint, "first_used": _when(v.first_used),
                         "last_used": _when(v.last_used),
                         "rounds": sum(1 for c in charges if c.fingerprint == v.fingerprint and c.round != LEDGER_ROUND)}
                        for v in ledger.versions(line.name)]
            out.append({
                "dataset": line.name,
                "fingerprint": line.fingerprint,
                "versions": versions,
                "budget": None if math.isinf(line.budget) else line.budget,
                "delta": line.delta,
                "privacy_unit": line.unit,
                "spent": spent,
                "remaining": None if math.isinf(line.budget) else max(line.budget - spent, 0.0),
                "runs": runs,
            })
    return out


def show(path: Path, as_json: bool) -> str:
    lines = summary(path)
    if as_json:
        return json.dumps(lines, indent=2)
    text = [f"privacy ledger {path}"]
    if not lines:
        text.append("  (no DP training recorded yet)")
    for d in lines:
        budget = "none" if d["budget"] is None else f"{d['budget']:g}"
        remaining = "unlimited" if d["remaining"] is None else f"{d['remaining']:.3f}"
        text.append(f"\ndataset {d['dataset']}  delta {d['delta']:g}")
        text.append(f"  epsilon per {d['privacy_unit']}: budget {budget} | spent {d['spent']:.3f} | remaining {remaining}")
        if d["privacy_unit"] == "record":
            text.append("  (the unit is the record: the data names no patients, so a patient with several "
                        "records is protected only as a group of them)")
        text.append(f"  data versions: {len(d['versions'])} (the budget is shared by all)")
        for v in d["versions"]:
            text.append(f"    {v['fingerprint'][:12]}  first used {v['first_used']}  last used {v['last_used']}  "
                        f"{v['rounds']} rounds")
        text.append(f"  {'run':<34} {'rounds':>6} {'noise':>8} {'q':>8} {'steps':>7} {'epsilon':>8}")
        for r in d["runs"]:
            noise = ",".join(f"{n:.3f}" for n in r["noise_multiplier"])
            rate = ",".join(f"{q:.3f}" for q in r["sample_rate"])
            text.append(f"  {r['run_id']:<34} {len(r['rounds']):>6} {noise:>8} {rate:>8} {r['steps']:>7} {r['epsilon']:>8.3f}")
            if r["class_histogram_noise"] is not None:
                text.append(f"    (class histogram released once, noise sd {r['class_histogram_noise']:g}; "
                            "counted in the run's epsilon)")
    return "\n".join(text)


def export_csv(path: Path, out: Path) -> int:
    """One row per run per dataset, with the dataset's totals: for an ethics board."""
    rows = 0
    lines = summary(path)  # a missing or broken ledger stops here, before the CSV is created
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "fingerprint", "delta", "budget", "spent_total", "remaining",
                         "run_id", "rounds", "noise_multiplier", "sample_rate", "steps", "class_histogram_noise",
                         "run_epsilon"])
        for d in lines:
            for r in d["runs"]:
                writer.writerow([
                    d["dataset"], d["fingerprint"], d["delta"], d["budget"] if d["budget"] is not None else "",
                    f"{d['spent']:.6f}", "" if d["remaining"] is None else f"{d['remaining']:.6f}",
                    r["run_id"], len(r["rounds"]), ";".join(map(str, r["noise_multiplier"])),
                    ";".join(map(str, r["sample_rate"])), r["steps"],
                    "" if r["class_histogram_noise"] is None else r["class_histogram_noise"], f"{r['epsilon']:.6f}",
                ])
                rows += 1
    return rows


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
