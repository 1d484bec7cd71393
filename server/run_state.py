"""Start a run directory, or pick a killed run up from its last complete checkpoint.

A new run writes `run.json` (its fedward run id and settings) before round 1.
`resume=true` (CLI: `--resume RUN_DIR`) reads it back, loads the newest
`checkpoints/round-NNNN.npz` (written atomically after a round completed: weights,
round, strategy state such as FedAdam's moments; read back without pickle), and cuts metrics.jsonl and
rejections.jsonl back to the rounds that checkpoint covers, so the resumed run
continues the numbering without duplicates. The run id stays the same, which
lets the hospitals' ledgers recognise a replayed round.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from common.atomic import write_atomic
from common.config import RunConfig
from common.errors import FedwardError
from common.serialization import shape_mismatch
from server.records import load_checkpoint

RUN_FILE = "run.json"


@dataclass
class RunState:
    run_id: str
    config: RunConfig
    completed_round: int = 0
    arrays: ArrayRecord | None = None
    strategy_state: dict[str, Any] = field(default_factory=dict)


def start(config: RunConfig) -> RunState:
    out_dir = Path(config.out_dir)
    if config.resume:
        return resume(out_dir)
    if (out_dir / "metrics.jsonl").exists() or (out_dir / RUN_FILE).exists():
        raise FedwardError(
            f"{out_dir} already holds a run; choose another out-dir, or continue it by adding resume=true "
            "to the run config (a deployment: the same `fedward run` command; a simulation: "
            "`fedward simulate --resume` with that folder)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(run_id=uuid.uuid4().hex, config=config)
    write_atomic(out_dir / RUN_FILE, json.dumps({"run_id": state.run_id, "config": config.to_mapping()}, indent=2))
    return state


def resume(out_dir: Path) -> RunState:
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise FedwardError(f"cannot resume {out_dir}: no {RUN_FILE} there (is it a fedward run directory?)")
    try:
        saved = json.loads(path.read_text())
        config = RunConfig.from_mapping({**saved["config"], "resume": True, "out-dir": str(out_dir)})
        run_id = str(saved["run_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise FedwardError(f"cannot resume {out_dir}: {path} is damaged ({err})") from None
    state = RunState(run_id=run_id, config=config)
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        try:
            completed, arrays, strategy_state = load_checkpoint(checkpoint)
        except (OSError, ValueError, KeyError) as err:
            raise FedwardError(f"cannot resume {out_dir}: checkpoint {checkpoint} is damaged ({err}); "
                               "delete it to resume from the one before") from None
        state.completed_round = completed
        state.arrays = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        state.strategy_state = strategy_state
    # Fused rounds evaluate round k's model in round k + 1's messages: rows of that evaluation
    # were written by the round the kill interrupted, and the resumed round writes them again.
    fused = config.fused_rounds and not config.secure_aggregation and state.completed_round < config.num_server_rounds
    for name in ("metrics.jsonl", "rejections.jsonl"):
        truncate_after(out_dir / name, state.completed_round, drop_last_evaluation=fused)
    for stale in ("model_card.json", "final_model.pt", "report.png"):
        (out_dir / stale).unlink(missing_ok=True)
    return state


def check_checkpoint_fits(arrays: ArrayRecord, expected: dict[str, tuple[int, ...]], out_dir: Path) -> None:
    """Refuse, before any round is sent, a checkpoint whose weights do not fit the model this
    run's data gives (the data, or fedward's reading of it, changed since the run began)."""
    mismatch = shape_mismatch(expected, {k: tuple(int(d) for d in a.shape) for k, a in arrays.items()})
    if mismatch:
        raise FedwardError(
            f"cannot resume {out_dir}: its checkpoint does not fit the model this data gives now "
            f"({mismatch}); the data or fedward's reading of it changed since the run began (e.g. "
            "sequence-rnn reads two ECG leads, 11 channels, since 2026-12-02): start a new run in another out-dir"
        )


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    for name, value in state.items():
        setattr(strategy, name, value)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / "checkpoints").glob("round-*.npz"))
    return found[-1] if found else None


def truncate_after(path: Path, completed_round: int, drop_last_evaluation: bool = False) -> list[dict[str, Any]]:
    """Keep the JSON lines of rounds <= completed_round (a torn last line is dropped); with
    `drop_last_evaluation`, not the evaluate rows of completed_round (written by the next round)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        done = int(row.get("round", 0))
        if drop_last_evaluation and done == completed_round and row.get("split") == "evaluate":
            continue
        if done <= completed_round:
            kept.append(row)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


