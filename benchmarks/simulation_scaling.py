"""Simulation overhead and scaling: wall time per round vs pure training, peak memory.

    .venv/bin/python benchmarks/simulation_scaling.py [--hospitals 10 50 100] [--rounds 5]
        [--overhead-epochs 3] [--no-overhead-dp] [--no-compare-separate]

Each size runs `fedward simulate` (Flower's simulation engine on Ray, the
default of 2 CPUs per hospital, so one ClientApp at a time on 2 cores) with the
image CNN on PneumoniaMNIST split iid over N hospitals, in a fresh process:
each of --hospitals with 1 local epoch without DP (scaling), then 10 hospitals
with more local epochs and with DP (how overhead depends on the work per message),
and 10 hospitals at 1 epoch once more with a separate evaluate message per round
(`--separate-evaluate`, fused-rounds=false) next to the default of one message.

- overhead: per round from round 2 on, the train and evaluate phases' wall time (the server
  loop's own clock, `metrics.jsonl` rows of hospital "all") minus the time the
  hospitals spent inside training and evaluation (each reply's `seconds`),
  divided by the latter. With fused rounds a round's evaluation rows are spent in the
  next round's train message, and are counted there. Everything outside a hospital's training and
  evaluation counts as overhead: Ray dispatch, the ClientApp's set-up, the
  message round trip, loading the hospital's data, the accountant under DP.
  Round 1 is reported apart: its first message starts the Ray worker, which
  imports torch and reads the data set.
- startup: the whole command's wall time minus all phases (Ray start-up, the
  query phase, central evaluation, the model card).
- memory: the process tree (driver, Ray's raylet and GCS, workers), sampled
  every 0.5 s from /proc: peak of summed RSS (counts shared pages once per
  process: an upper bound) and of summed PSS (shares them out).

Target (issue 5): overhead <= 10% at 10 hospitals; peak memory <= 4 GB at 100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def _tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Peak summed RSS and PSS (bytes) of a process tree, sampled until stopped."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _tree(self.pid)
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) * 1024
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) * 1024
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run(hospitals: int, rounds: int, local_epochs: int, dp: bool, fused: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "fedward", "simulate", "--task", "image-cnn", "--data", str(DATA),
               "--hospitals", str(hospitals), "--partition", "iid", "--rounds", str(rounds),
               "--local-epochs", str(local_epochs), "--out", str(out), *([] if dp else ["--no-dp"]),
               *([] if fused else ["--separate-evaluate"])]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        memory = TreeMemory(proc.pid)
        memory.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - start
        memory.stop()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # an evaluation fused into the next round's train message has no phase (seconds) of its own
    phases = [r for r in rows if r["hospital"] == "all" and r["split"] in ("train", "evaluate")
              and r["seconds"] is not None]
    inside = [r for r in rows if r["hospital"] not in ("all", "server") and r["split"] in ("train", "evaluate")]

    def spent_in(r: dict) -> int:
        """The round whose exchange this work ran in."""
        fused_evaluation = fused and r["split"] == "evaluate" and r["round"] < rounds
        return r["round"] + 1 if fused_evaluation else r["round"]

    def split(first: bool) -> tuple[float, float, int]:
        """Phase wall time, hospitals' own time and messages: round 1 or the later rounds."""
        keep = (lambda n: n == 1) if first else (lambda n: n > 1)
        messages = sum(1 for r in inside if keep(spent_in(r)) and (r["split"] == "train" or spent_in(r) == r["round"]))
        return (sum(r["seconds"] for r in phases if keep(r["round"])),
                sum(r["seconds"] for r in inside if keep(spent_in(r))), messages)

    wall_1, own_1, _ = split(True)
    wall_n, own_n, replies_n = split(False)
    return {
        "measure": "simulation_scaling", "hospitals": hospitals, "rounds": rounds, "local_epochs": local_epochs,
        "dp": dp, "fused": fused, "wall_s": wall, "round_1_wall_s": wall_1, "round_1_own_s": own_1,
        "round_wall_s": wall_n / (rounds - 1), "round_own_s": own_n / (rounds - 1),
        "overhead": (wall_n - own_n) / own_n, "overhead_per_message_s": (wall_n - own_n) / replies_n,
        "startup_and_finish_s": wall - wall_1 - wall_n, "peak_rss_gb": memory.peak_rss / 1e9,
        "peak_pss_gb": memory.peak_pss / 1e9, "peak_processes": memory.peak_processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hospitals", type=int, nargs="+", default=[10, 50, 100], help="scaling: these sizes")
    parser.add_argument("--rounds", type=int, default=5, help="at least 2: overhead is read from round 2 on")
    parser.add_argument("--overhead-hospitals", type=int, default=10)
    parser.add_argument("--overhead-epochs", type=int, nargs="*", default=[3],
                        help="overhead: also these local epochs (more training per message)")
    parser.add_argument("--overhead-dp", action=argparse.BooleanOptionalAction, default=True,
                        help="overhead: also with DP (epsilon 3), 1 and each --overhead-epochs")
    parser.add_argument("--compare-separate", action=argparse.BooleanOptionalAction, default=True,
                        help="overhead: also 1 epoch without DP with a separate evaluate message per round")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: set FEDWARD_DATA_DIR to the folder holding medmnist/")
    variants = [(n, 1, False) for n in args.hospitals]
    variants += [(args.overhead_hospitals, e, False) for e in args.overhead_epochs]
    if args.overhead_dp:
        variants += [(args.overhead_hospitals, e, True) for e in (1, *args.overhead_epochs)]
    runs = [(n, e, dp, True) for n, e, dp in variants]
    if args.compare_separate:
        runs.insert(1, (args.overhead_hospitals, 1, False, False))
    table = []
    for hospitals, epochs, dp, fused in runs:
        row = run(hospitals, args.rounds, epochs, dp, fused)
        print(json.dumps(row), flush=True)
        table.append(row)
    write_section(
        "Simulation overhead and scaling", table,
        ["hospitals", "rounds", "local_epochs", "dp", "fused", "round_1_wall_s", "round_1_own_s", "round_wall_s",
         "round_own_s", "overhead", "overhead_per_message_s", "startup_and_finish_s", "wall_s", "peak_rss_gb",
         "peak_pss_gb", "peak_processes"],
        notes="Image CNN on PneumoniaMNIST (4,708 train images) split iid, `fedward simulate` defaults (Ray, "
              "2 CPUs per hospital: one ClientApp at a time). *_own_s: the hospitals' own training "
              "and evaluation seconds, summed over hospitals; round_* and overhead are rounds 2 onwards, "
              "overhead = (phase wall time - own time) / own time. Round 1 also pays the Ray worker's start "
              "(imports, reading the data set). fused: one message per hospital and round (the default), else a train and an evaluate message. Memory: the whole process tree, summed over processes. "
              "Targets: overhead <= 10% at 10 hospitals, memory <= 4 GB at 100.",
    )


if __name__ == "__main__":
    main()
