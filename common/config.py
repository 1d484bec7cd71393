"""The run configuration: one dataclass, parsed and validated in one place.

The same keys appear in `[tool.flwr.app.config]` of pyproject.toml, in
`flwr run . --run-config "k=v"`, in the ConfigRecord the server sends with every
message, and (as flags) in `fedward simulate`. Parsing refuses unknown keys,
wrong types and impossible values with the key named.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError

TASK_NAMES = ("tabular", "image-cnn", "sequence-rnn", "image-gan")
STRATEGY_NAMES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)
CLASS_WEIGHTING = ("auto", "true", "false")
LR_SCHEDULES = ("auto", "constant", "cosine")
# Keys that Flower's strategies inject into the ConfigRecord they send.
# `fedward-run-id` names the run across a resume, for the hospitals' privacy ledgers;
# `fedward-evaluate-first` asks a hospital to evaluate a train message's model before training it.
EVALUATE_FIRST = "fedward-evaluate-first"
_INJECTED_KEYS = frozenset({"server-round", "proximal-mu", "fedward-run-id", EVALUATE_FIRST})


@dataclass(frozen=True)
class Partition:
    """How one data set is split into virtual hospitals (simulation only)."""

    scheme: str  # "iid" | "dirichlet" | "natural"
    alpha: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Partition:
        if text in ("iid", "natural"):
            return cls(text)
        if text.startswith("dirichlet:"):
            try:
                alpha = float(text.split(":", 1)[1])
            except ValueError:
                alpha = -1.0
            if alpha <= 0:
                raise ConfigError(
                    f"partition={text!r}: the Dirichlet alpha must be a positive "
                    "number, e.g. dirichlet:0.5"
                )
            return cls("dirichlet", alpha)
        raise ConfigError(
            f"partition={text!r} is not known: use iid, dirichlet:ALPHA or natural"
        )

    def __str__(self) -> str:
        return f"dirichlet:{self.alpha:g}" if self.scheme == "dirichlet" else self.scheme


MAX_LOCAL_STEPS = 10_000  # min-local-steps above this is a typo or a runaway run: refused


@dataclass(frozen=True)
class RunConfig:
    """Everything the operator or researcher sets for one run."""

    task: str = "tabular"
    data_path: str = "builtin:breast-cancer"
    partition: str = "iid"
    num_server_rounds: int = 0  # 0 = the task's default (common/tasks/base.py), as for lr, batch-size, max-grad-norm
    strategy: str = "fedavg"
    dp: bool = True
    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 0.0  # 0 = the task's default
    local_epochs: int = 1
    # without DP only: a hospital whose local epochs give fewer optimiser steps than this trains more whole
    # epochs to reach it (small data: 19 records at batch 32 is one step an epoch); -1: the task's default
    # (sequence-rnn and image-cnn 30, others 0 = off); under DP every step is charged, so it must stay -1 or 0
    min_local_steps: int = -1
    batch_size: int = 0  # 0 = the task's default
    lr: float = 0.0  # 0 = the task's default learning rate
    # the local lr over the run's rounds: "constant", "cosine" (round r of R trains at lr x (1 + cos(pi (r - 1) / R)) / 2,
    # common/schedule.py) or "auto" = the task's (image-cnn: cosine under DP; otherwise constant)
    lr_schedule: str = "auto"
    proximal_mu: float = 0.01
    server_lr: float = 0.1
    # strategy fedavg without central DP: server momentum on the mean update (Flower's FedAvgM); -1: the
    # task's default (image-cnn 0.7 without DP, sequence-rnn 0.5 under DP, otherwise 0 = plain FedAvg)
    server_momentum: float = -1.0
    trim_beta: float = 0.2
    model: str = ""
    image_size: int = 28
    max_samples: int = 0
    test_fraction: float = 0.25
    # without DP only (under DP see common/class_prior.py, weights after clipping): "auto" = the task's
    # recipe (common/tasks/base.py `class_weighting`), "true" = inverse-frequency loss weights, "false" = none
    class_weighting: str = "auto"
    # Where the data names each sample's patient, DP protects patients: a step samples patients and
    # each sampled patient contributes at most this many of its samples (its gradient is their mean).
    records_per_patient: int = 16
    prior_correction: bool = True
    # Under DP, each hospital releases its noisy class histogram once per run (charged in its account) and
    # the server scores decisions by the balanced rule on that prior (common/class_prior.py); false: argmax.
    balanced_decision: bool = True
    # the balanced rule's tau (argmax_c log p_c - tau log prior_c); 0: the task's default (common/tasks/base.py)
    balanced_tau: float = 0.0
    min_hospitals: int = 2
    round_timeout: float = 600.0
    min_replies: int = 1  # fewer usable train replies: the round is skipped (model kept)
    outlier_factor: float = 10.0  # reject updates > this x the round's median norm (0: off)
    seed: int = 42
    out_dir: str = "runs/latest"
    bad_files: str = "stop"  # an unreadable file/record/row: "stop" naming it, or "skip" and count
    resume: bool = False  # continue the run in out-dir from its last checkpoint
    secure_aggregation: bool = False  # SecAgg+: the server sees only the masked sum of updates
    central_dp_noise: float = 0.0  # central (hospital-level) DP: noise multiplier on the mean update; 0 = off
    central_dp_clip: float = 1.0  # central DP: each hospital's update is clipped to this L2 norm
    # One message per hospital per round: each train message is first evaluated as received (the previous
    # round's model), one evaluate-only message after the last round. false: a train and an evaluate
    # message every round (Flower's flow). Secure-aggregation rounds always use separate messages.
    fused_rounds: bool = True
    init_weights: str = ""  # a state dict (.pt/.pth/.npz) the global model starts from; "" = random init

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from hyphenated keys (run config / ConfigRecord); refuse bad ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key in _INJECTED_KEYS and key.replace("-", "_") not in fields:
                continue
            name = key.replace("-", "_")
            if name not in fields:
                known = ", ".join(sorted(k.replace("_", "-") for k in fields))
                raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
            kwargs[name] = _coerce(key, value, fields[name].type)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_mapping(self) -> dict[str, bool | int | float | str]:
        """Hyphenated keys, the form of run config and ConfigRecords."""
        out: dict[str, bool | int | float | str] = {}
        for f in dataclasses.fields(self):
            out[f.name.replace("_", "-")] = getattr(self, f.name)
        return out

    @property
    def balanced_rule(self) -> bool:
        """Whether the server can decide by the balanced rule: under DP with balanced-decision=true, where the
        hospitals release their noisy class histograms (a SecAgg+ run releases none: the server sees only sums)."""
        return self.dp and self.balanced_decision and not self.secure_aggregation

    def replace(self, **changes: Any) -> RunConfig:
        config = dataclasses.replace(self, **changes)
        if "balanced_tau" not in changes and not config.balanced_rule:
            config = dataclasses.replace(config, balanced_tau=0.0)  # a derived run without the rule (no DP)
        config.validate()
        return config

    @property
    def partition_spec(self) -> Partition:
        return Partition.parse(self.partition)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(
                f"task={self.task!r} is not known; choose one of {', '.join(TASK_NAMES)}"
            )
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"strategy={self.strategy!r} is not known; choose one of "
                f"{', '.join(STRATEGY_NAMES)}"
            )
        Partition.parse(self.partition)
        if self.bad_files not in ("stop", "skip"):
            raise ConfigError(f"bad-files={self.bad_files!r} must be 'stop' or 'skip'")
        _task_default_or_positive("num-server-rounds", self.num_server_rounds)
        _positive("local-epochs", self.local_epochs)
        if not -1 <= self.min_local_steps <= MAX_LOCAL_STEPS:
            raise ConfigError(
                f"min-local-steps={self.min_local_steps} must be in 0..{MAX_LOCAL_STEPS} (0: off) or -1 for the task's "
                "default; it is a floor for small hospitals (sequence-rnn and image-cnn use 30)"
            )
        if self.dp and self.min_local_steps > 0:
            raise ConfigError(
                f"min-local-steps={self.min_local_steps} applies to runs without DP only: under DP every step is "
                "charged to the privacy budget. Leave min-local-steps=-1 (under DP it means no floor), or train "
                "longer with local-epochs, which the noise is calibrated to"
            )
        _task_default_or_positive("batch-size", self.batch_size)
        _positive("records-per-patient", self.records_per_patient)
        if self.lr < 0:
            raise ConfigError(f"lr={self.lr} must be > 0 (or 0 for the task's default)")
        _positive("server-lr", self.server_lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"lr-schedule={self.lr_schedule!r} must be auto (the task's), constant or cosine"
            )
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ConfigError(
                f"class-weighting={self.class_weighting!r} must be auto (the task's recipe), true or false"
            )
        if self.balanced_tau < 0 or not math.isfinite(self.balanced_tau):
            raise ConfigError(
                f"balanced-tau={self.balanced_tau} must be a finite number > 0 (or 0 for the task's default)"
            )
        if self.balanced_tau and not self.balanced_rule:
            why = ("no DP" if not self.dp else "balanced-decision=false" if not self.balanced_decision
                   else "secure-aggregation=true, where no hospital releases its class histogram")
            raise ConfigError(
                f"balanced-tau={self.balanced_tau} is the balanced rule's tau, which applies only under DP with "
                f"balanced-decision=true and without secure aggregation; this run has {why}: leave it out"
            )
        if self.server_momentum != -1 and not 0 <= self.server_momentum < 1:
            raise ConfigError(
                f"server-momentum={self.server_momentum} must be in [0, 1) (0: plain FedAvg) or -1 for the task's default"
            )
        if self.server_momentum > 0 and self.strategy != "fedavg":
            raise ConfigError(
                f"server-momentum={self.server_momentum} applies to strategy fedavg only (FedAvgM); "
                f"strategy={self.strategy}: set server-momentum=-1 or 0"
            )
        if self.server_momentum > 0 and self.central_dp_noise > 0:
            raise ConfigError(
                "server-momentum > 0 cannot go with central-dp-noise > 0: central DP noises a plain mean of "
                "clipped updates; set server-momentum=0"
            )
        _positive("image-size", self.image_size)
        _positive("round-timeout", self.round_timeout)
        _positive("min-hospitals", self.min_hospitals)
        _positive("min-replies", self.min_replies)
        if self.outlier_factor != 0 and self.outlier_factor <= 1:
            raise ConfigError(
                f"outlier-factor={self.outlier_factor} must be > 1 (times the median update norm) or 0 to turn it off"
            )
        if self.secure_aggregation:
            if self.strategy in ("fedmedian", "fedtrimmedavg", "krum"):
                raise ConfigError(
                    f"secure-aggregation=true cannot go with strategy={self.strategy}: it needs each "
                    "hospital's update, which secure aggregation hides; use fedavg, fedprox or fedadam/fedyogi/fedadagrad"
                )
            if self.min_hospitals < 2:
                raise ConfigError("secure-aggregation=true needs min-hospitals >= 2 (3 or more to survive a dropout)")
        if self.central_dp_noise < 0:
            raise ConfigError(f"central-dp-noise={self.central_dp_noise} must be >= 0 (0 turns central DP off)")
        _positive("central-dp-clip", self.central_dp_clip)
        if self.central_dp_noise > 0:
            if self.strategy not in ("fedavg", "fedprox"):
                raise ConfigError(
                    f"central-dp-noise > 0 needs strategy fedavg or fedprox (an unweighted mean of clipped "
                    f"updates, whose sensitivity the noise is calibrated to); strategy={self.strategy}"
                )
            if self.secure_aggregation:
                raise ConfigError(
                    "central-dp-noise > 0 cannot go with secure-aggregation=true: the server clips each "
                    "hospital's update, which secure aggregation hides; choose one"
                )
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu={self.proximal_mu} must be >= 0")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim-beta={self.trim_beta} must be in [0, 0.5)")
        if self.max_samples < 0:
            raise ConfigError(f"max-samples={self.max_samples} must be >= 0 (0 = all)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test-fraction={self.test_fraction} must be in (0, 1)")
        if self.dp:
            if self.epsilon <= 0:
                raise ConfigError(
                    f"epsilon={self.epsilon} must be > 0 (or turn DP off with --no-dp)"
                )
            if not 0.0 < self.delta < 1.0:
                raise ConfigError(f"delta={self.delta} must be in (0, 1)")
            _task_default_or_positive("max-grad-norm", self.max_grad_norm)
        if self.image_size % 4 and self.task == "image-gan":
            raise ConfigError(
                f"image-size={self.image_size}: the GAN needs a multiple of 4 (e.g. 28)"
            )


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value} must be > 0")


def _task_default_or_positive(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} must be > 0 (or 0 for the task's default)")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Accept the value if it fits the field's type; say what was expected if not."""
    kind = annotation if isinstance(annotation, str) else annotation.__name__
    if key == "class-weighting" and isinstance(value, bool | str):  # also as written before: class-weighting=true
        return ("true" if value else "false") if isinstance(value, bool) else value.lower()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r} must be true or false")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}={value!r} must be an integer")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be an integer") from None
        if not number.is_integer():
            raise ConfigError(f"{key}={value!r} must be an integer")
        return int(number)
    if kind == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string")
    return value
