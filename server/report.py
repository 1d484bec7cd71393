"""End of run: model_card.json and report.png next to the final model."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.config import RunConfig  # noqa: E402
from server import central_dp  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("common", "server", "client")
# What every summary leads with: balanced accuracy and AUROC, then accuracy beside the
# accuracy of always answering the most common class.
HEADLINE = ("balanced_accuracy", "auroc", "accuracy", "majority_baseline", "macro_f1", "loss")


def code_hash() -> str:
    """SHA-256 over the project's Python sources, in a fixed order."""
    digest = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _last(rows: list[dict[str, Any]], hospital: str, split: str) -> dict[str, Any] | None:
    matches = [r for r in rows if r["hospital"] == hospital and r["split"] == split]
    return matches[-1] if matches else None


def model_card(
    config: RunConfig, rows: list[dict[str, Any]], rejections: list[dict[str, Any]],
    extra_metrics: dict[str, float], data_source: str,
) -> dict[str, Any]:
    names = sorted(({r["hospital"] for r in rows} | {r["hospital"] for r in rejections}) - {"all", "server"})
    hospitals = {}
    for name in names:
        train = _last(rows, name, "train")
        evaluation = _last(rows, name, "evaluate")
        trained = sorted({r["round"] for r in rows if r["hospital"] == name and r["split"] == "train"})
        hospitals[name] = {
            "train_samples": train and train["num_examples"],
            "local_steps_last_round": train and train.get("steps"),  # local-epochs, or more without DP (min-local-steps)
            "test_samples": evaluation and evaluation["num_examples"],
            "epsilon_spent": train and train["epsilon"],
            "privacy_unit": train and train.get("privacy_unit"),
            "delta": train and train.get("delta"),
            "rounds_trained": trained,
            "rounds_missed": [r for r in range(1, config.num_server_rounds + 1) if r not in trained],
            "rounds_refused": [  # the hospital said no, e.g. its privacy ledger's budget
                {"round": r["round"], "reason": r["reason"]} for r in rejections
                if r["hospital"] == name and r["reason"].startswith("refused")
            ],
            "final_test_metrics": evaluation and {k: evaluation.get(k) for k in HEADLINE},
        }
    final = {split: _last(rows, who, split) for who, split in (("all", "evaluate"), ("server", "central"))}
    return {
        "task": config.task,
        "data": data_source,
        "partition": config.partition,
        "strategy": config.strategy,
        "server_momentum": config.server_momentum,  # > 0: FedAvgM
        "rounds": config.num_server_rounds,
        "differential_privacy": {
            "enabled": config.dp,
            "target_epsilon": config.epsilon if config.dp else None,
            # what the hospitals account with (each sets its own; the run's is only a request)
            "delta": max((h["delta"] for h in hospitals.values() if h.get("delta")), default=None)
            if config.dp else None,
            "delta_requested": config.delta if config.dp else None,
            "max_grad_norm": config.max_grad_norm if config.dp else None,
            "accountant": "opacus rdp",
            "privacy_unit": _units(hospitals) if config.dp else None,
        },
        "secure_aggregation": {
            "enabled": config.secure_aggregation,
            "protocol": "SecAgg+ (Flower SecAggPlusWorkflow), updates quantised to 2^22 levels over +-8"
            if config.secure_aggregation else None,
        },
        "central_dp": central_dp.card_section(config, rows),
        "config": _card_config(config),
        "hospitals": hospitals,
        "rejected_replies": [r for r in rejections if r["hospital"] != "all"],
        "rounds_skipped": [r for r in rejections if r["hospital"] == "all"],
        "final_metrics": {
            "federated_evaluation": final["evaluate"],
            "central_evaluation": final["central"],
            **extra_metrics,
        },
        "git_commit": git_commit(),
        "code_sha256": code_hash(),
    }


# settings that only mean something when the hospitals train with DP
DP_ONLY_SETTINGS = ("epsilon", "delta", "max-grad-norm", "records-per-patient", "balanced-decision", "balanced-tau")


def _card_config(config: RunConfig) -> dict[str, Any]:
    """The run's settings as run, without the DP ones in a run without DP (they did not apply)."""
    mapping = config.to_mapping()
    if config.dp:
        # balanced-tau stays 0 where the rule cannot apply (no release, or a task that makes no class decisions)
        return mapping if config.balanced_tau else {k: v for k, v in mapping.items() if k != "balanced-tau"}
    return {key: value for key, value in mapping.items() if key not in DP_ONLY_SETTINGS}


def _units(hospitals: dict[str, Any]) -> str:
    """In words: what each hospital's epsilon protects."""
    units = {info["privacy_unit"] for info in hospitals.values() if info.get("privacy_unit")}
    if units == {"patient"}:
        return "patient: each hospital's epsilon bounds what its update reveals about any one patient's records"
    if units == {"record"}:
        return ("record: each hospital's epsilon bounds what its update reveals about any one record; the data "
                "names no patients, so a patient with several records is protected only as a group of them")
    if units:
        return "per hospital (see hospitals.*.privacy_unit): " + ", ".join(
            f"{name} per {info['privacy_unit']}" for name, info in hospitals.items() if info.get("privacy_unit"))
    return "unknown (no hospital trained)"


def write_model_card(out_dir: Path, card: dict[str, Any]) -> Path:
    path = out_dir / "model_card.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def write_report_png(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Balanced test accuracy per hospital and overall, and epsilon spent per hospital, by round."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for hospital in sorted({r["hospital"] for r in rows}):
        points = [(r["round"], r["balanced_accuracy"]) for r in rows
                  if r["hospital"] == hospital and r["split"] in ("evaluate", "central")
                  and r.get("balanced_accuracy") is not None]
        if points:
            style = "-o" if hospital in ("all", "server") else "--"
            left.plot(*zip(*points, strict=True), style, label=hospital)
        spent = [(r["round"], r["epsilon"]) for r in rows
                 if r["hospital"] == hospital and r["split"] == "train" and r["epsilon"] is not None]
        if spent and hospital != "all":
            right.plot(*zip(*spent, strict=True), "-o", label=hospital)
    left.set(title="Balanced test accuracy", xlabel="round", ylabel="balanced accuracy")
    right.set(title="Epsilon spent (cumulative)", xlabel="round", ylabel="epsilon")
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
