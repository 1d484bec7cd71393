"""`fedward benefit show --dir DIR`: a hospital's own benefit table, where it keeps it.

DIR is the hospital's `benefit-dir` (or any folder under it): every run's report there
(`benefit.json`, written by client/benefit.py after the run's last round), oldest first.
A run directory of `fedward simulate --benefit` works too (its model card's `benefit`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.benefit import format_table
from common.errors import FedwardError

REPORT = "benefit.json"  # client.benefit.REPORT, without importing the client's torch stack


def reports(folder: Path) -> list[dict[str, Any]]:
    """Each run's report under `folder`: {"run_id", "written", "rows", "where"}, oldest first."""
    if not folder.is_dir():
        raise FedwardError(f"--dir {folder} is not a folder; give the hospital's benefit-dir (node config)")
    found = []
    for path in sorted(folder.rglob(REPORT)):
        try:
            saved = json.loads(path.read_text())
            found.append({"run_id": saved["run_id"], "written": saved["written"], "rows": [saved["row"]],
                          "where": str(path.parent), "details": {k: saved.get(k) for k in ("local_only", "personalised")}})
        except (ValueError, KeyError) as err:
            raise FedwardError(f"{path} is damaged ({err}); delete it to have the next run write it again") from None
    card = folder / "model_card.json"
    if not found and card.is_file():
        benefit = json.loads(card.read_text()).get("benefit")
        if benefit:
            found.append({"run_id": folder.name, "written": "", "rows": benefit["hospitals"], "where": str(folder),
                          "details": {}})
    if not found:
        raise FedwardError(
            f"--dir {folder}: no benefit report there. A hospital writes one after a run's last round when its "
            "node config says benefit-report=true, in its benefit-dir (default: benefit/ beside its privacy ledger)")
    return sorted(found, key=lambda r: r["written"])


def show(folder: Path, as_json: bool = False) -> str:
    found = reports(folder)
    if as_json:
        return json.dumps(found, indent=2)
    blocks = []
    for report in found:
        head = f"run {report['run_id']}" + (f" ({report['written']})" if report["written"] else "") + \
            f": {report['where']}"
        local, personal = report["details"].get("local_only"), report["details"].get("personalised")
        notes = []
        if local:
            notes.append(f"local-only: {local['epochs']} epochs on this hospital's training split, no DP "
                         f"({local['seconds']} s)")
        if personal and "weight_local" in personal:
            notes.append(f"personalised: {personal['weight_local']:g} x local-only + "
                         f"{1 - personal['weight_local']:g} x global (class probabilities), the mix chosen on this "
                         f"hospital's training split only ({personal['seconds']} s)")
        elif personal:  # a report written before the mix (fine-tuning)
            notes.append(f"personalised: the final global model + {personal['epochs']} epochs here, no DP "
                         f"({personal['seconds']} s)")
        blocks.append("\n".join([head, *notes, "scores on the held-out split; differences to local-only with a "
                                 "paired bootstrap 95% interval", format_table(report["rows"])]))
    return "\n\n".join(blocks)
