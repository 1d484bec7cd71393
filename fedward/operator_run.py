"""`fedward run`: start a run on the SuperLink with `flwr run`, follow it to its end,
and exit non-zero with the reason when it did not complete.

`flwr run --stream` exits 0 whatever became of the run. This starts the run with
`flwr run --format json` (for its id), streams its log with `flwr log --stream`,
then reads the final status with `flwr ls --run-id --format json`. The status is
also written to `run-status.json` in the run's `out-dir` (the operator runs this
on the SuperLink machine, where the run directory is, since the control API
listens on loopback).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import FedwardError

POLL_S = 2.0
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    details: str

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def _flwr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    flwr = shutil.which("flwr")
    if flwr is None:
        raise FedwardError("flwr is not on PATH; install fedward (pip install -e .) in this environment")
    return subprocess.run([flwr, *args], capture_output=True, text=True, timeout=timeout)  # noqa: S603


def _json(result: subprocess.CompletedProcess[str], what: str) -> dict:
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        raise FedwardError(f"{what} failed (exit {result.returncode}): "
                           f"{(result.stdout + result.stderr).strip()[-2000:]}") from None


def start(app: str, federation: str, run_config: str) -> int:
    result = _flwr("run", app, federation, "--run-config", run_config, "--format", "json", timeout=300)
    reply = _json(result, "flwr run")
    if not reply.get("success") or reply.get("run-id") is None:
        raise FedwardError(f"flwr run did not start a run: {reply.get('error-message') or reply}")
    return int(reply["run-id"])


def status(federation: str, run_id: int) -> tuple[str, str]:
    reply = _json(_flwr("ls", federation, "--run-id", str(run_id), "--format", "json"), "flwr ls")
    runs = reply.get("runs") or []
    if not reply.get("success") or not runs:
        raise FedwardError(f"flwr ls found no run {run_id}: {reply.get('error-message') or reply}")
    return str(runs[0]["status"]), str(runs[0].get("status-details") or "")


def follow(federation: str, run_id: int, timeout_s: float) -> RunOutcome:
    """Stream the run's log while polling its status until it has finished."""
    flwr = shutil.which("flwr") or "flwr"
    streamer = subprocess.Popen([flwr, "log", str(run_id), federation, "--stream"])  # noqa: S603
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            state, details = status(federation, run_id)
            if state.startswith("finished"):
                return RunOutcome(run_id, state, details)
            if time.monotonic() > deadline:
                return RunOutcome(run_id, f"{state} (still running after --timeout {timeout_s:g} s)", details)
            time.sleep(POLL_S)
    finally:
        try:
            streamer.wait(timeout=5)  # the stream ends by itself with the run
        except subprocess.TimeoutExpired:
            streamer.terminate()
            streamer.wait(timeout=10)


def record(out_dir: Path | None, outcome: RunOutcome) -> None:
    if out_dir is None or not out_dir.is_dir():
        return
    (out_dir / "run-status.json").write_text(json.dumps(
        {"flwr-run-id": outcome.run_id, "status": outcome.status, "details": outcome.details,
         "completed": outcome.completed, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        indent=2) + "\n")


def out_dir_of(run_config: str) -> Path | None:
    from flwr.common.config import parse_config_args

    try:
        values = parse_config_args([run_config]) if run_config.strip() else {}
    except Exception:  # noqa: BLE001 - click's exception type
        raise FedwardError(f"--run-config {run_config!r} is not key=value pairs: text values go in double "
                           "quotes, e.g. out-dir=\"/srv/fedward/runs/r1\"") from None
    value = values.get("out-dir")
    return Path(str(value)) if value else None


def resume_hint(out_dir: Path | None) -> str:
    """How to continue a failed run, only where it can be resumed: the run began and wrote its run file
    (a run refused for its config wrote nothing; `resume` would fail the same way)."""
    from server.run_state import RUN_FILE

    if out_dir is None or not (out_dir / RUN_FILE).is_file():
        return ""
    return f"; its checkpoints stay in {out_dir}: to continue it, run the same command with resume=true added to --run-config"


def run(app: str, federation: str, run_config: str, timeout_s: float) -> int:
    out_dir = out_dir_of(run_config)
    run_id = start(app, federation, run_config)
    print(f"fedward: started run {run_id} on {federation}; following it to its end", flush=True)
    outcome = follow(federation, run_id, timeout_s)
    record(out_dir, outcome)
    if outcome.completed:
        print(f"fedward: run {run_id} {outcome.status}" + (f"; report in {out_dir}" if out_dir else ""))
        return 0
    hint = resume_hint(out_dir)
    print(f"fedward: error: run {run_id} {outcome.status}"
          + (f": {outcome.details}" if outcome.details else "") + f" (the run's log is above){hint}",
          file=sys.stderr, flush=True)
    return 1
