"""Round overhead of a real deployment on loopback: one JSON line per round.

    .venv/bin/python benchmarks/deploy_round_overhead.py [--rounds 3] [--modes cold warm fused]
                                                         [--state file|memory] [--keep DIR]

`--keep DIR` leaves each mode's processes' logs in DIR/MODE (with FLWR_LOG_LEVEL=DEBUG
they carry millisecond timestamps, for a timeline of one message).

Three heart-disease hospitals, TLS and node auth, the tabular task with DP, in up
to three set-ups one after the other: `cold`, Flower's stock executor (a fresh
ClientApp process per message) with a train and an evaluate message per round;
`warm`, fedward's warm fork executor, same messages; `fused`, the warm executor
with one message per round (fused-rounds, the default: the train message also
evaluates the model it carries). `--state memory` runs the SuperLink without its
state database (":flwr-in-memory:"), to show what the database costs.

Per round: overhead = for each exchange of the round, its wall time minus the
slowest hospital's own work in it (training, plus in a fused message the evaluation
of the received model), from the run's metrics.jsonl. A fused run's last round
has two exchanges (train, then the final evaluate). A last line gives the cost of
starting one ClientApp process's imports (python -c 'import client.app'), which
Flower pays per message.
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


MODES = {"cold": (True, False), "warm": (False, False), "fused": (False, True)}  # (cold executor, fused)


def overheads(run_dir: Path, mode: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    def hospital_seconds(server_round: int, split: str) -> dict[str, float]:
        return {r["hospital"]: r["seconds"] for r in rows if r["round"] == server_round and r["split"] == split
                and r["hospital"] not in ("all", "server")}

    def wall(server_round: int, split: str) -> float | None:
        return next((r["seconds"] for r in rows if r["round"] == server_round and r["split"] == split
                     and r["hospital"] == "all"), None)

    out = []
    for server_round in sorted({r["round"] for r in rows}):
        train = hospital_seconds(server_round, "train")
        before = server_round - 1
        if before >= 1 and wall(before, "evaluate") is None:  # the previous round's evaluation rode along
            evaluated = hospital_seconds(before, "evaluate")
            train = {h: s + evaluated.get(h, 0.0) for h, s in train.items()}
        phases = [(wall(server_round, "train"), max(train.values()))]
        if (evaluate_wall := wall(server_round, "evaluate")) is not None:
            phases.append((evaluate_wall, max(hospital_seconds(server_round, "evaluate").values())))
        out.append({
            "measure": "deploy_round_overhead", "executor": mode, "round": server_round,
            "exchanges": len(phases),
            "round_wall_s": round(sum(w for w, _ in phases), 2),
            "slowest_hospital_work_s": round(sum(k for _, k in phases), 3),
            "overhead_s": round(sum(w - k for w, k in phases), 2),
        })
    return out


def import_cost() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import client.app"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--state", choices=("file", "memory"), default="file",
                        help="the SuperLink's state: a database file (as deployed) or in memory")
    parser.add_argument("--keep", type=Path, help="keep each mode's logs and run directory here")
    args = parser.parse_args()
    for mode in args.modes:
        measure(mode, args.rounds, args.keep, args.state)
    print(json.dumps({"measure": "clientapp_import_s", "seconds": round(import_cost(), 2)}))


def measure(mode: str, rounds: int, keep: Path | None, state: str) -> None:
    if keep is not None:
        (keep / mode).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() if keep is None else nullcontext(str(keep / mode)) as tmp:
        fed = LoopbackFederation(Path(tmp))
        try:
            fed.make_certs(*HOSPITALS)
            fed.start_superlink(in_memory=state == "memory")
            for name in HOSPITALS:
                fed.register(name)
                fed.start_node(name, DATA / "heart_disease_uci" / f"processed.{name}.data", cold=MODES[mode][0])
            fed.wait_online(len(HOSPITALS))
            out = Path(tmp) / "run"
            start = time.perf_counter()
            run = fed.run(f'data-path="" num-server-rounds={rounds} min-hospitals=3 out-dir="{out}" '
                          f'fused-rounds={str(MODES[mode][1]).lower()}')
            run.wait(timeout=1800)
            for line in overheads(out, mode):
                print(json.dumps(line), flush=True)
            print(json.dumps({"measure": "deploy_run_wall_s", "executor": mode, "rounds": rounds, "state": state,
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        finally:
            fed.stop_all()


if __name__ == "__main__":
    main()
