"""The hospital's own privacy settings, read from its node config (never from the run).

    privacy-ledger               path of the SQLite ledger (created if missing)
    dataset-name                 the budget line this data belongs to (default: the hospital's name)
    epsilon-budget               cumulative epsilon this line may ever spend
    delta                        the hospital's delta for calibration and accounting (default 1e-5)
    run-epsilon-cap              most epsilon one run may spend (and, with a window, all runs in it)
    run-cap-window-hours         the cap also binds every round within this many hours, whatever
                                 the server calls its runs (0: off)
    allow-no-dp                  true: this hospital accepts runs with dp=false
    require-secure-aggregation   true: train only inside SecAgg+ (client/secure.py)
    reproducible-noise           simulation only: seed DP noise from the run's seed

A real hospital (node config with `data-path`) trains with DP unless it says
`allow-no-dp=true`, and always keeps a ledger: without `privacy-ledger` it is
$FEDWARD_HOME/privacy-ledger.sqlite (FEDWARD_HOME defaults to ~/.fedward), with
a budget of 10, a per-run cap of 3 over a 24-hour window and delta 1e-5 unless
set. A run asking for more epsilon than the cap is refused, not silently
calibrated down. The run's `delta` is never used where a ledger is kept: a
server could otherwise buy epsilon with a large delta.

A simulated hospital (Flower's simulation engine: `partition-id`) has no defaults:
without a ledger its count lives in the node's context for one Flower run.
"""

from __future__ import annotations

import math
import os
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.errors import ConfigError

KEYS = ("privacy-ledger", "dataset-name", "epsilon-budget", "delta", "run-epsilon-cap", "run-cap-window-hours",
        "allow-no-dp", "require-secure-aggregation", "reproducible-noise")
DEFAULT_DELTA = 1e-5
DEFAULT_BUDGET = 10.0
DEFAULT_RUN_CAP = 3.0
DEFAULT_CAP_WINDOW_HOURS = 24.0
HOME = "FEDWARD_HOME"
LEDGER_FILE = "privacy-ledger.sqlite"


def default_ledger() -> Path:
    """$FEDWARD_HOME/privacy-ledger.sqlite, FEDWARD_HOME defaulting to ~/.fedward."""
    return Path(os.environ.get(HOME) or Path.home() / ".fedward") / LEDGER_FILE


@dataclass(frozen=True)
class NodePrivacy:
    ledger: str | None
    budget: float
    delta: float | None
    run_cap: float | None
    dataset_name: str | None = None
    cap_window_hours: float = 0.0
    allow_no_dp: bool = False
    require_secure_aggregation: bool = False
    reproducible_noise: bool = False
    defaults: tuple[str, ...] = ()  # the keys this hospital did not set, filled in by fedward

    @property
    def requires_dp(self) -> bool:
        return self.ledger is not None and not self.allow_no_dp

    def delta_for(self, num_train: int, run_delta: float, unit: str = "record") -> float:
        """The delta to account with; refuse one that does not protect single units (`num_train`
        records, or patients where DP is per patient)."""
        delta = (self.delta if self.delta is not None else DEFAULT_DELTA) if self.ledger else run_delta
        if delta >= 1.0 / max(num_train, 1):
            where = "node config delta" if self.ledger else "run setting delta"
            raise ConfigError(
                f"{where}={delta:g} is not below 1/n = 1/{num_train} for this hospital's "
                f"{num_train} training {unit}s; use a delta well below {1.0 / max(num_train, 1):.2g}"
            )
        return delta

    def epsilon_target(self, run_epsilon: float) -> float:
        return min(run_epsilon, self.run_cap) if self.run_cap is not None else run_epsilon

    def training_seed(self, config: RunConfig, server_round: int, hospital: str) -> int:
        """The seed of a round's training randomness (Poisson batches, DP noise).

        Under DP it comes from the OS's entropy, fresh for every round and run, so the
        server can neither predict nor subtract the noise; only a simulation that asks
        (`reproducible-noise`) derives it from the run's seed. Without DP there is no
        noise to protect and the run's seed keeps the shuffling repeatable."""
        if config.dp and not self.reproducible_noise:
            return secrets.randbits(63)
        return config.seed * 100_003 + server_round * 1_009 + zlib.crc32(hospital.encode()) % 997

    def announcement(self, hospital: str) -> str:
        """One line for the hospital's log: what protects its data, and which values are defaults."""
        if self.ledger is None:
            return f"hospital {hospital}: privacy: no ledger (simulation: counted per Flower run only)"
        mark = lambda key, text: text + (" (default)" if key in self.defaults else "")  # noqa: E731
        budget = "none" if math.isinf(self.budget) else f"{self.budget:g}"
        cap = "none" if self.run_cap is None else f"{self.run_cap:g}" + (
            f" per run and per {self.cap_window_hours:g} h" if self.cap_window_hours else " per run")
        return (f"hospital {hospital}: privacy: DP {'optional (allow-no-dp)' if self.allow_no_dp else 'required'}; "
                f"ledger {mark('privacy-ledger', self.ledger)}; line {mark('dataset-name', self.dataset_name or hospital)}; "
                f"epsilon-budget {mark('epsilon-budget', budget)}; run-epsilon-cap {mark('run-epsilon-cap', cap)}; "
                f"delta {mark('delta', f'{self.delta if self.delta is not None else DEFAULT_DELTA:g}')}"
                + ("; secure aggregation required" if self.require_secure_aggregation else ""))


def node_privacy(node_config: Mapping[str, object]) -> NodePrivacy:
    deployed = "data-path" in node_config  # a real hospital's SuperNode, not Flower's simulation engine
    ledger = node_config.get("privacy-ledger")
    budget = _number(node_config, "epsilon-budget")
    delta = _number(node_config, "delta")
    cap = _number(node_config, "run-epsilon-cap")
    window = _number(node_config, "run-cap-window-hours")
    flags = {key: _flag(node_config, key) for key in ("allow-no-dp", "require-secure-aggregation", "reproducible-noise")}
    if flags["reproducible-noise"] and deployed:
        raise ConfigError(
            "node config reproducible-noise=true is for simulation only: a hospital's DP noise must be "
            "secret from the server; remove it"
        )
    defaults: list[str] = []
    if deployed:
        defaults = [k for k in ("privacy-ledger", "dataset-name", "epsilon-budget", "run-epsilon-cap", "delta")
                    if k not in node_config]
        ledger = ledger if ledger is not None else str(default_ledger())
        budget = budget if budget is not None else DEFAULT_BUDGET
        cap = cap if cap is not None else DEFAULT_RUN_CAP
        window = window if window is not None else DEFAULT_CAP_WINDOW_HOURS
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
    if window is not None and window < 0:
        raise ConfigError(f"node config run-cap-window-hours={window:g} must be >= 0 (0: no window)")
    name = node_config.get("dataset-name")
    if name is not None and not str(name).strip():
        raise ConfigError("node config dataset-name is empty: name the data source, e.g. dataset-name=\"va-cardiology\"")
    return NodePrivacy(
        ledger=str(ledger) if ledger is not None else None,
        budget=budget if budget is not None else math.inf,
        delta=delta,
        run_cap=cap,
        dataset_name=str(name).strip() if name is not None else None,
        cap_window_hours=window or 0.0,
        allow_no_dp=flags["allow-no-dp"],
        require_secure_aggregation=flags["require-secure-aggregation"],
        reproducible_noise=flags["reproducible-noise"],
        defaults=tuple(defaults),
    )


def _flag(node_config: Mapping[str, object], key: str) -> bool:
    value = node_config.get(key, False)
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    if str(value).strip().lower() in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"node config {key}={value!r} must be true or false")


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
