"""Shared by the small-data benchmarks: one `fedward simulate` run as a user types it, and its
last round's scores read back from the run's metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from report import ROOT


def simulate_and_score(flags: list[str], out: Path) -> dict[str, float]:
    """Runs `fedward simulate FLAGS --out OUT`; returns the last round's validation (the hospitals'
    held-out splits, federated), central test scores, the fewest local steps a hospital took and
    the seconds the run took."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedward", "simulate", *flags, "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = max(r["round"] for r in rows)
    val = next(r for r in rows if r["round"] == last and r["hospital"] == "all" and r["split"] == "evaluate")
    test = next(r for r in rows if r["round"] == last and r["hospital"] == "server")
    steps = [r["steps"] for r in rows if r["split"] == "train" and r["round"] == last]
    return {"val_balanced_accuracy": val["balanced_accuracy"], "val_auroc": val["auroc"],
            "test_balanced_accuracy": test["balanced_accuracy"], "test_accuracy": test["accuracy"],
            "test_auroc": test["auroc"], "majority": test["majority_baseline"], "steps_a_round": min(steps),
            "seconds": time.perf_counter() - start}
