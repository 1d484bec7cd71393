"""The DP account of one run at one hospital: replay or reserve a round, train, settle, send.

With a privacy ledger (node config; a real hospital always has one) the run's
history lives in the ledger, so a restarted SuperNode or a resumed run continues
it. A round the hospital already sent for this run is answered with the very
same update from `client.sent_rounds`, uncharged; otherwise the round is reserved
in the ledger before training (budget, per-run cap over the hospital's window,
the run's own epsilon target) and settled before the reply leaves: the update is
kept for a replay and its digest written to the ledger. Without a ledger
(simulation), the history lives in the node's context for one Flower run.

The run's noise multiplier is calibrated once, on its first round, from
min(run epsilon, the hospital's cap); later rounds of the same run (linked by
Flower's or fedward's run id, common/ledger.py) keep it.

Where the run asks for the balanced decision rule (common/class_prior.py), the
hospital also releases its training split's noisy class histogram, once per run:
the calibration counts that release (one Gaussian-mechanism entry) with the planned
steps, so both together spend the run's epsilon. The release is charged in the
ledger (round PRIOR_ROUND) before its noise is drawn from the round's secret seed,
kept beside the sent rounds (or in the node's context without a ledger) and sent
again, as it was, with every later reply of the run: a replayed round never draws
new noise. Where the task trains balanced, every round of the run weights each class by
`training_weights` of that kept histogram (post-processing: free), where it holds enough
units for its noise (common/class_prior.py `weights_from_release`). A charge whose kept
histogram was lost is not redrawn: nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context

from client.node_privacy import NodePrivacy
from client.sent_rounds import Attempt, SentRound, SentRounds, update_digest
from common.class_prior import (
    HISTOGRAM_NOISE, LEDGER_ROUND, MAX_NOISE_INCREASE, histogram_entry, release, weights_from_release,
)
from common.atomic import write_atomic
from common.config import RunConfig
from common.errors import ConfigError
from common.ledger import BudgetExceeded, Charge, DatasetLine, PrivacyLedger, RunLimits, history_of
from common.privacy import DPState, History, calibrate_noise, epsilon_spent, history_from_json, history_to_json
from common.training import DPPlan

_KEY = "fedward-dp"
PRIOR_ROUND = LEDGER_ROUND  # the ledger's round number of the class-histogram release
_PRIOR_FILE = "class-prior.json"


@dataclass(frozen=True)
class PriorLabels:
    """What the class-histogram release reads: the training split's labels (and patients), and
    the seed of its noise (secret under DP, client/node_privacy.py `training_seed`)."""

    y: np.ndarray
    num_classes: int
    patients: np.ndarray | None
    seed: int

__all__ = ["RunAccount", "update_digest"]


class RunAccount:
    """Opened per message; `replay` or `reserve` before training, `settle` before the reply leaves.

    `releases_prior`: the run releases the class histogram (counted in the calibration)."""

    def __init__(
        self, context: Context, config: RunConfig, privacy: NodePrivacy,
        dataset: DatasetLine, run_id: str, plan: DPPlan, flwr_run_id: str | None = None,
        releases_prior: bool = False, balanced_training: bool = False,
    ) -> None:
        self.context, self.config, self.privacy, self.run_id = context, config, privacy, run_id
        self.flwr_run_id = flwr_run_id
        self.delta = dataset.delta
        self.dataset = dataset
        self.unit = plan.unit  # the accountant's sample rate is the rate at which DP samples units
        self.sample_rate = plan.sample_rate
        self.steps_per_round = plan.steps_per_round
        self.releases_prior = releases_prior
        self.balanced_training = balanced_training
        self.ledger = PrivacyLedger(privacy.ledger) if privacy.ledger else None
        self.sent = SentRounds(privacy.ledger, dataset.name, run_id) if privacy.ledger else None
        self._charge: Charge | None = None
        self._attempt: Attempt | None = None
        self._charges: list[Charge] = []
        self._round = 0
        past, self.prior_charged = self._past()
        steps = [h for i, h in enumerate(past) if not (self.prior_charged and i == self._prior_index)]
        self.first_round = not steps
        self.target = privacy.epsilon_target(config.epsilon)
        if steps:
            self.noise = steps[0][0]  # calibrated once, on the run's first round
            self.releases_prior = self.prior_charged  # decided then: a run never releases later
        elif self.prior_charged:
            self.noise = calibrate_noise(self.target, self.delta, self.sample_rate, plan.planned_steps,
                                         (histogram_entry(),))
        else:
            self.noise = calibrate_noise(self.target, self.delta, self.sample_rate, plan.planned_steps)
            if releases_prior:
                self.noise, self.releases_prior = self._with_release(plan.planned_steps)
        self.history: History = past
        self.prior: list[float] | None = self._kept_prior() if self.prior_charged else None

    def _with_release(self, planned_steps: int) -> tuple[float, bool]:
        """The DP-SGD noise with the class-histogram release counted, and whether to release: only
        where it raises that noise by at most MAX_NOISE_INCREASE (a small epsilon cannot afford it;
        the run then trains without releasing and the server decides by argmax)."""
        try:
            noise = calibrate_noise(self.target, self.delta, self.sample_rate, planned_steps, (histogram_entry(),))
        except ConfigError:
            noise = math.inf
        if noise <= self.noise * (1 + MAX_NOISE_INCREASE):
            return noise, True
        print(f"{self.dataset.name}: epsilon {self.target:g} is too small to release the class histogram as well "
              f"(it would raise the training noise by more than {MAX_NOISE_INCREASE:.0%}); this run trains without "
              "it and the server decides by argmax", flush=True)
        return self.noise, False

    def _past(self) -> tuple[History, bool]:
        """The run's history so far, and whether the class histogram was charged in it."""
        self._prior_index = -1
        if self.ledger is not None:
            charges = self.ledger.run_charges(self.dataset.name, self.run_id, self.flwr_run_id)
            self._charges = charges
            marked = [i for i, c in enumerate(charges) if c.round == PRIOR_ROUND]
            self._prior_index = marked[0] if marked else -1
            return history_of(charges), bool(marked)
        record = self.context.state.config_records.get(_KEY)
        if record is None:
            return [], False
        charged = bool(record.get("prior-charged", False))
        self._prior_index = 0 if charged else -1  # released before any step
        return history_from_json(str(record["history"])), charged

    def replay(self, server_round: int) -> SentRound | None:
        """What this hospital already sent for this run and round (a plain round), if kept."""
        return self.sent.load(server_round) if self.sent is not None else None

    def reserve(self, server_round: int, labels: PriorLabels | None = None) -> DPState:
        """The DP state to train with; BudgetExceeded if the hospital's limits refuse the round.
        With `labels`, the run's class histogram is released first if it was not yet."""
        if self.privacy.run_cap is not None and self.config.epsilon > self.privacy.run_cap:
            raise BudgetExceeded(
                f"budget: the run asks for epsilon {self.config.epsilon:g}, above this hospital's "
                f"run-epsilon-cap {self.privacy.run_cap:g}"
            )
        self._round = server_round
        limits = RunLimits(cap=self.privacy.run_cap, window_s=self.privacy.cap_window_hours * 3600,
                           target=self.target)
        if labels is not None and self.releases_prior and not self.prior_charged:
            self._release_prior(labels, limits)
        if self.ledger is not None:
            self._charge = self._retaken(server_round) or self.ledger.reserve(
                self.dataset, self.run_id, server_round, self.noise, self.sample_rate,
                self.steps_per_round, flwr_run_id=self.flwr_run_id, limits=limits,
            )
        return DPState(self.noise, self.config.max_grad_norm, self.delta, list(self.history),
                       class_weights=self._class_weights())

    def _retaken(self, server_round: int) -> Charge | None:
        """The round's own reservation, where an earlier attempt reserved it and was killed before sending
        anything: trained again under it, not charged twice (once; `PrivacyLedger.retake`). Held from here
        until settled, so no other attempt can train under it meanwhile."""
        assert self.ledger is not None and self.sent is not None
        self._attempt = self.sent.hold(server_round)
        if self._attempt is None:  # a live attempt has the round: this one is charged on its own
            return None
        charge = self.ledger.retake(self.dataset.name, self.run_id, server_round,
                                    (self.noise, self.sample_rate, self.steps_per_round))
        if charge is not None:
            self.history = history_of([c for c in self._charges if c.id != charge.id])
            print(f"{self.dataset.name}: round {server_round} of run {self.run_id} was reserved by an attempt that "
                  "ended before sending anything; training it again under that reservation", flush=True)
        return charge

    def _class_weights(self) -> list[float] | None:
        """The training's class weights: from the run's released histogram (post-processing), or none."""
        if not self.balanced_training or self.prior is None:
            return None
        weights = weights_from_release(np.asarray(self.prior))
        return None if weights is None else [float(w) for w in weights]

    def _release_prior(self, labels: PriorLabels, limits: RunLimits) -> None:
        """Charge the histogram release, then draw its noise once and keep what is sent."""
        noise, rate, steps = histogram_entry()
        if self.ledger is not None:
            charge = self.ledger.reserve(self.dataset, self.run_id, PRIOR_ROUND, noise, rate, steps,
                                         flwr_run_id=self.flwr_run_id, limits=limits)
        self.history.append((noise, rate, steps))
        self.prior_charged = True
        noisy = release(labels.y, labels.num_classes, labels.patients, np.random.default_rng(labels.seed))
        self.prior = [float(v) for v in noisy]
        text = json.dumps(self.prior)
        if self.ledger is not None and self.sent is not None:
            _write_atomically(self.sent.folder / _PRIOR_FILE, text)
            self.ledger.settle(charge, hashlib.sha256(text.encode()).hexdigest())
        else:
            self._keep_in_context()

    def _kept_prior(self) -> list[float] | None:
        if self.sent is not None:
            try:
                values = json.loads((self.sent.folder / _PRIOR_FILE).read_text())
            except (OSError, ValueError):
                return None  # charged but lost: never redrawn, so nothing is sent
            return [float(v) for v in values]
        record = self.context.state.config_records.get(_KEY)
        text = str(record.get("prior", "")) if record is not None else ""
        return [float(v) for v in json.loads(text)] if text else None

    def prior_record(self) -> ConfigRecord | None:
        """What the reply carries of the class histogram: the kept noisy release, or nothing."""
        if self.prior is None:
            return None
        record = ConfigRecord({"counts": list(self.prior), "noise": HISTOGRAM_NOISE, "unit": self.unit})
        weights = self._class_weights()
        if weights is not None:
            record["training-weights"] = weights  # the server's balanced rule divides by what the model saw
        return record

    def epsilon_after(self) -> float:
        """The run's epsilon once the reserved round is sent."""
        return epsilon_spent([*self.history, (self.noise, self.sample_rate, self.steps_per_round)], self.delta)

    def settle(self, update: ArrayRecord, metrics: dict[str, int | float], masked: bool = False) -> None:
        """Record what is about to be sent: kept for a replay (plain rounds), its digest in the ledger."""
        step = (self.noise, self.sample_rate, self.steps_per_round)
        self.history.append(step)
        if self.ledger is not None and self._charge is not None:
            digest = update_digest(update)
            if self.sent is not None and not masked:
                self.sent.save(self._round, update, metrics, digest)
            self.ledger.settle(self._charge, digest)
            self.close()
        else:
            self._keep_in_context()

    def _keep_in_context(self) -> None:
        self.context.state.config_records[_KEY] = ConfigRecord({
            "history": history_to_json(self.history), "prior-charged": self.prior_charged,
            "prior": json.dumps(self.prior) if self.prior is not None else "",
        })

    def abandon(self) -> None:
        """Training failed with an error: the round stays charged and is never trained under again."""
        if self.ledger is not None and self._charge is not None:
            self.ledger.abandon(self._charge)
        self.close()

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        if self._attempt is not None:  # after the ledger: a settled round is never trained under again
            self._attempt.release()
            self._attempt = None


def _write_atomically(path: Path, text: str) -> None:
    """`text` to `path` whole or not at all, in a private folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text)
