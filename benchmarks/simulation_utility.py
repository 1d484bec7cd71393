"""Clinical utility of simulated federations: one JSON line per configuration.

    .venv/bin/python benchmarks/simulation_utility.py [--only NAME ...]

Each configuration runs `fedward simulate` in a fresh process and reports the
final federated evaluation (mean over hospitals' held-out data, weighted by
samples), the unweighted mean over hospitals, the central test split where the
data set has one, epsilon spent and wall time. Needs FEDWARD_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))

CONFIGS: dict[str, list[str]] = {
    "pneumonia-5h-dir0.5-eps8": ["--task", "image-cnn", "--data", str(DATA / "medmnist/pneumoniamnist.npz"),
                                 "--hospitals", "5", "--partition", "dirichlet:0.5", "--rounds", "10", "--epsilon", "8"],
    "pneumonia-5h-dir0.5-nodp": ["--task", "image-cnn", "--data", str(DATA / "medmnist/pneumoniamnist.npz"),
                                 "--hospitals", "5", "--partition", "dirichlet:0.5", "--rounds", "10", "--no-dp"],
    "heart-4h-natural-eps1": ["--data", str(DATA / "heart_disease_uci"), "--hospitals", "4",
                              "--partition", "natural", "--rounds", "10", "--epsilon", "1"],
    "heart-4h-natural-nodp": ["--data", str(DATA / "heart_disease_uci"), "--hospitals", "4",
                              "--partition", "natural", "--rounds", "10", "--no-dp"],
}


def run(name: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "fedward", "simulate", *args, "--out", str(out)],
                                cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        wall = time.perf_counter() - start
        if result.returncode != 0:
            return {"name": name, "error": result.stderr[-500:]}
        card = json.loads((out / "model_card.json").read_text())
    final = card["final_metrics"]
    hospitals = card["hospitals"]
    per_hospital = {h: v["final_test_metrics"]["accuracy"] for h, v in hospitals.items()}
    return {
        "name": name,
        "args": " ".join(args),
        "federated_accuracy_weighted": final["federated_evaluation"]["accuracy"],
        "federated_auroc_weighted": final["federated_evaluation"]["auroc"],
        "hospital_accuracy_mean": sum(per_hospital.values()) / len(per_hospital),
        "hospital_accuracy": per_hospital,
        "central_test": final["central_evaluation"] and {
            k: final["central_evaluation"][k] for k in ("accuracy", "auroc", "num_examples")},
        "epsilon_spent_max": max((v["epsilon_spent"] or 0.0) for v in hospitals.values()),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    for name in parser.parse_args().only:
        print(json.dumps(run(name, CONFIGS[name])), flush=True)


if __name__ == "__main__":
    main()
