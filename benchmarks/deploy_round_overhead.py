"""Round overhead of a real deployment on loopback: one JSON line per round.

    .venv/bin/python benchmarks/deploy_round_overhead.py [--rounds 3] [--modes cold warm] [--keep DIR]

`--keep DIR` leaves each mode's processes' logs in DIR/MODE (with FLWR_LOG_LEVEL=DEBUG
they carry millisecond timestamps, for a timeline of one message).

Three heart-disease hospitals, TLS and node auth, the tabular task with DP, once
with Flower's stock executor (`cold`: a fresh ClientApp process per message) and
once with fedward's warm fork executor (`warm`), one after the other.
Per round: overhead = (train phase wall time - slowest hospital's training) +
(evaluate phase wall time - slowest hospital's evaluation), from the run's
metrics.jsonl. A last line gives the cost of starting one ClientApp process's
imports (python -c 'import client.app'), which Flower pays per message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.deploy.loopback import LoopbackFederation  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))
HOSPITALS = ("cleveland", "hungarian", "va")


def overheads(run_dir: Path, mode: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = []
    for server_round in sorted({r["round"] for r in rows}):
        mine = [r for r in rows if r["round"] == server_round]
        phases = {}
        for split in ("train", "evaluate"):
            wall = next(r["seconds"] for r in mine if r["hospital"] == "all" and r["split"] == split)
            work = max(r["seconds"] for r in mine if r["hospital"] not in ("all", "server") and r["split"] == split)
            phases[split] = (wall, work)
        out.append({
            "measure": "deploy_round_overhead", "executor": mode, "round": server_round,
            "round_wall_s": round(sum(w for w, _ in phases.values()), 2),
            "slowest_hospital_work_s": round(sum(k for _, k in phases.values()), 3),
            "overhead_s": round(sum(w - k for w, k in phases.values()), 2),
        })
    return out


def import_cost() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import client.app"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument("--keep", type=Path, help="keep each mode's logs and run directory here")
    args = parser.parse_args()
    for mode in args.modes:
        measure(mode, args.rounds, args.keep)
    print(json.dumps({"measure": "clientapp_import_s", "seconds": round(import_cost(), 2)}))


def measure(mode: str, rounds: int, keep: Path | None) -> None:
    if keep is not None:
        (keep / mode).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() if keep is None else nullcontext(str(keep / mode)) as tmp:
        fed = LoopbackFederation(Path(tmp))
        try:
            fed.make_certs(*HOSPITALS)
            fed.start_superlink()
            for name in HOSPITALS:
                fed.register(name)
                fed.start_node(name, DATA / "heart_disease_uci" / f"processed.{name}.data", cold=mode == "cold")
            fed.wait_online(len(HOSPITALS))
            out = Path(tmp) / "run"
            start = time.perf_counter()
            run = fed.run(f'data-path="" num-server-rounds={rounds} min-hospitals=3 out-dir="{out}"')
            run.wait(timeout=1800)
            for line in overheads(out, mode):
                print(json.dumps(line), flush=True)
            print(json.dumps({"measure": "deploy_run_wall_s", "executor": mode, "rounds": rounds,
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        finally:
            fed.stop_all()


if __name__ == "__main__":
    main()
