"""How much a hospital lets the server learn from evaluations (node config, never the run).

Evaluations are not DP: each one scores a model the server chose on the
hospital's held-out records. So the hospital bounds them itself:

    min-eval-size     fewest held-out records it answers evaluations on
                      (default 10 at a real hospital; a simulated one has none unless set)
    max-evaluations   most evaluations answered (default 100; fused rounds count too):
                      with a privacy ledger (every real hospital has one) counted in
                      the ledger over the hospital's `run-cap-window-hours` (24 h by
                      default), across runs and restarts, so a server cannot get a
                      fresh allowance by starting new runs; without one, per Flower run

Below the first, or past the second, the evaluation is refused with a reply that
says only that; a fused round still trains.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord, Context

from client.failures import PublicRefusal
from client.hospital import node_settings
from client.node_privacy import node_privacy
from common.errors import ConfigError
from common.ledger import PrivacyLedger

DEFAULT_MIN_EVAL_SIZE = 10
DEFAULT_MAX_EVALUATIONS = 100
_COUNT = "fedward-evaluations"


class EvaluationRefused(PublicRefusal):
    """The hospital's evaluation limits refuse this evaluation."""


def allow_evaluation(context: Context, held_out: int, line: str) -> None:
    """Count one evaluation of the ledger line `line` (or of this run, without a ledger), or
    refuse it (EvaluationRefused)."""
    settings = node_settings(context.node_config)
    min_size, most = _limits(settings)
    if held_out < min_size:
        raise EvaluationRefused(
            f"evaluation refused: the held-out split is smaller than this hospital's min-eval-size={min_size}"
        )
    privacy = node_privacy(settings)
    if privacy.ledger:
        with PrivacyLedger(privacy.ledger) as ledger:
            done = ledger.count_evaluation(privacy.dataset_name or line, most, privacy.cap_window_hours * 3600,
                                           str(context.run_id))
        if done is None:
            window = f"per {privacy.cap_window_hours:g} h" if privacy.cap_window_hours else "in all"
            raise EvaluationRefused(
                f"evaluation refused: this hospital's allowance of max-evaluations={most} evaluations {window} is used up")
        return
    record = context.state.config_records.get(_COUNT)
    done = int(record["count"]) if record is not None else 0  # type: ignore[arg-type]
    if done >= most:
        raise EvaluationRefused(
            f"evaluation refused: this hospital's allowance of max-evaluations={most} evaluations per run is used up")
    context.state.config_records[_COUNT] = ConfigRecord({"count": done + 1})


def evaluation_limits(settings: Mapping[str, object]) -> tuple[int, int]:
    """(min-eval-size, max-evaluations) of this node config, checked."""
    return _limits(settings)


def _limits(settings: Mapping[str, object]) -> tuple[int, int]:
    real = "data-path" in settings
    values = []
    for key, default in (("min-eval-size", DEFAULT_MIN_EVAL_SIZE if real else 0),
                         ("max-evaluations", DEFAULT_MAX_EVALUATIONS)):
        try:
            value = int(settings.get(key, default))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"node config {key}={settings[key]!r} must be a whole number") from None
        if value < 0:
            raise ConfigError(f"node config {key}={value} must be >= 0")
        values.append(value)
    return values[0], values[1]
