"""Per-round records of a run: metrics.jsonl, TensorBoard, the console, checkpoints.

metrics.jsonl holds one JSON object per round per hospital and split (`train`,
`evaluate`), one aggregate per round and split (`hospital: "all"`; its seconds are
the phase's wall time, none for an evaluation fused into the next train message), and the
central evaluation (`hospital: "server"`), each with round, hospital, split,
loss, accuracy, auroc, macro_f1, epsilon, num_examples and seconds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import Strategy
from torch.utils.tensorboard import SummaryWriter

from server.screening import Rejection, hospital_of

FIELDS = (
    "loss", "balanced_accuracy", "auroc", "accuracy", "majority_baseline", "macro_f1", "epsilon",
    "noise_multiplier", "delta", "steps", "lr", "privacy_unit",
    "num_examples", "seconds", "skipped_files",
)
# Strategy attributes that carry state between rounds: FedOpt's moments and weights (dicts of arrays),
# FedAvgM's momentum (a list of arrays). FedAvgM's current_arrays (an ArrayRecord) is not kept: on resume
# its configure_train takes it from the checkpoint's weights.
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_of(metrics: Any) -> dict[str, Any]:
    """A MetricRecord's hyphenated keys as metrics.jsonl fields. A train row has no loss:
    hospitals send no un-noised statistic of their training data."""
    row = {key.replace("-", "_"): value for key, value in metrics.items()}
    row.setdefault("loss", None)
    return row


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class RunRecorder:
    """Appends to the run directory's records; on resume, continues the ones kept."""

    def __init__(self, out_dir: Path, num_rounds: int) -> None:
        self.out_dir = out_dir
        self.num_rounds = num_rounds
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        self.metrics_path = out_dir / "metrics.jsonl"
        self.rejections_path = out_dir / "rejections.jsonl"
        self.tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        self.rows: list[dict[str, Any]] = _read_jsonl(self.metrics_path)
        self.rejections: list[dict[str, Any]] = _read_jsonl(self.rejections_path)

    # ------------------------------------------------------------------ rounds
    def hospitals(self, server_round: int, split: str, replies: list[Message]) -> None:
        for msg in replies:
            row = row_of(next(iter(msg.content.metric_records.values())))
            named = msg.content.config_records.get("hospital")
            if named is not None and "privacy-unit" in named:  # what its epsilon protects
                row["privacy_unit"] = str(named["privacy-unit"])
            self.write(server_round, hospital_of(msg), split, row)

    def aggregate(self, server_round: int, split: str, metrics: dict[str, Any] | None, seconds: float | None) -> None:
        if metrics is None:
            return
        self.write(server_round, "all", split, {**row_of(metrics), "seconds": seconds})

    def reject(self, server_round: int, split: str, rejections: list[Rejection]) -> None:
        for r in rejections:
            entry = {"round": server_round, "hospital": r.hospital, "split": split, "reason": r.reason}
            self.rejections.append(entry)
            with self.rejections_path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            if r.hospital == "all":
                print(f"round {server_round}: {r.reason}", flush=True)
            else:
                verb = "" if r.reason.startswith("refused") else "rejected: "
                print(f"round {server_round}: hospital {r.hospital} {verb}{r.reason} [{split}]", flush=True)

    def write(self, server_round: int, hospital: str, split: str, values: dict[str, Any]) -> None:
        row = {"round": server_round, "hospital": hospital, "split": split}
        row.update({f: _clean(values.get(f)) for f in FIELDS})
        self.rows.append(row)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        for f in ("loss", "balanced_accuracy", "auroc", "accuracy", "epsilon"):
            if isinstance(row[f], int | float):
                self.tensorboard.add_scalar(f"{split}/{f}/{hospital}", row[f], server_round)
        self._print(row)

    def _print(self, row: dict[str, Any]) -> None:
        parts = [f"round {row['round']}/{self.num_rounds}", f"{row['hospital']:<14}", f"{row['split']:<8}"]
        for f, label in (("loss", "loss"), ("balanced_accuracy", "bal.acc"), ("auroc", "auroc"),
                         ("accuracy", "accuracy"), ("majority_baseline", "majority"), ("epsilon", "epsilon")):
            if f == "epsilon" and row["split"] == "train" and row[f] == 0 and not row.get("noise_multiplier"):
                parts.append("no DP")  # a train row without noise: "epsilon 0.000" read as a perfect guarantee
            elif isinstance(row[f], int | float):
                parts.append(f"{label} {row[f]:.3f}")
        if row["num_examples"] is not None:
            parts.append(f"n={int(row['num_examples'])}")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        self.tensorboard.close()


# -------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir: Path, server_round: int, arrays: ArrayRecord, strategy: Strategy) -> Path:
    """Weights, round number and strategy state (FedOpt's arrays and moments), written atomically
    as one .npz read back without pickle: `arrays/KEY`, `state/NAME/KEY`, and a JSON `meta`."""
    state = {name: getattr(strategy, name) for name in STRATEGY_STATE
             if hasattr(strategy, name) and not isinstance(getattr(strategy, name), ArrayRecord)}
    members = {f"arrays/{k}": a.numpy() for k, a in arrays.items()}
    for name, value in state.items():
        entries = enumerate(value) if isinstance(value, list) else (value or {}).items()
        members.update({f"state/{name}/{k}": np.asarray(v) for k, v in entries})
    meta = {"round": server_round, "strategy": type(strategy).__name__,
            "state": {name: value is not None for name, value in state.items()},
            "lists": [name for name, value in state.items() if isinstance(value, list)]}
    path = out_dir / "checkpoints" / f"round-{server_round:04d}.npz"
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **members)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """(round, weights, strategy state) of a checkpoint written by `save_checkpoint`."""
    with np.load(path, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        arrays = {n[len("arrays/"):]: saved[n] for n in saved.files if n.startswith("arrays/")}
        state: dict[str, Any] = {}
        for name, present in meta["state"].items():
            prefix = f"state/{name}/"
            value = {n[len(prefix):]: saved[n] for n in saved.files if n.startswith(prefix)} if present else None
            if value is not None and name in meta.get("lists", []):  # FedAvgM's momentum, in its order
                value = [value[str(i)] for i in range(len(value))]
            state[name] = value
    return int(meta["round"]), arrays, state


def save_final_model(out_dir: Path, arrays: ArrayRecord) -> Path:
    path = out_dir / "final_model.pt"
    torch.save({k: torch.from_numpy(np.array(a.numpy())) for k, a in arrays.items()}, path)
    return path
