"""The hospital's own privacy settings, read from its node config (never from the run).

    privacy-ledger   path of the SQLite ledger (created if missing)
    epsilon-budget   cumulative epsilon this dataset may ever spend (absent: no limit)
    delta            the hospital's delta for calibration and accounting (default 1e-5)
    run-epsilon-cap  most epsilon one run may spend (optional)

The run config's `epsilon` is the researcher's wish for one run; a hospital
calibrates to the smaller of it and its own cap, and its ledger refuses any round
that would pass the budget. The run's `delta` is not used where a ledger is set:
a server could otherwise buy epsilon with a large delta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import ConfigError

KEYS = ("privacy-ledger", "epsilon-budget", "delta", "run-epsilon-cap")
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class NodePrivacy:
    ledger: str | None
    budget: float
    delta: float | None
    run_cap: float | None

    @property
    def requires_dp(self) -> bool:
        return self.ledger is not None

    def delta_for(self, num_train: int, run_delta: float) -> float:
        """The delta to account with; refuse one that does not protect single records."""
        delta = (self.delta if self.delta is not None else DEFAULT_DELTA) if self.ledger else run_delta
        if delta >= 1.0 / max(num_train, 1):
            where = "node config delta" if self.ledger else "run setting delta"
            raise ConfigError(
                f"{where}={delta:g} is not below 1/n = 1/{num_train} for this hospital's "
                f"{num_train} training records; use a delta well below {1.0 / max(num_train, 1):.2g}"
            )
        return delta

    def epsilon_target(self, run_epsilon: float) -> float:
        return min(run_epsilon, self.run_cap) if self.run_cap is not None else run_epsilon


def node_privacy(node_config: Mapping[str, object]) -> NodePrivacy:
    ledger = node_config.get("privacy-ledger")
    budget = _number(node_config, "epsilon-budget")
    delta = _number(node_config, "delta")
    cap = _number(node_config, "run-epsilon-cap")
    if ledger is None and (budget is not None or cap is not None or delta is not None):
        raise ConfigError(
            "node config sets a privacy budget but no privacy-ledger: add "
            "privacy-ledger=\"/path/to/ledger.sqlite\" so the hospital can keep count"
        )
    for key, value in (("epsilon-budget", budget), ("run-epsilon-cap", cap)):
        if value is not None and not value > 0:
            raise ConfigError(f"node config {key}={value:g} must be > 0")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"node config delta={delta:g} must be in (0, 1)")
    return NodePrivacy(
        ledger=str(ledger) if ledger is not None else None,
        budget=budget if budget is not None else math.inf,
        delta=delta,
        run_cap=cap,
    )


def _number(node_config: Mapping[str, object], key: str) -> float | None:
    if key not in node_config:
        return None
    value = node_config[key]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"node config {key}={value!r} must be a number") from None
    if math.isnan(number) or (math.isinf(number) and key != "epsilon-budget"):
        raise ConfigError(f"node config {key}={value!r} must be a finite number")
    return number
