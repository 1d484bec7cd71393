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
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context

from client.node_privacy import NodePrivacy
from client.sent_rounds import SentRound, SentRounds, update_digest
from common.config import RunConfig
from common.ledger import BudgetExceeded, Charge, DatasetLine, PrivacyLedger, RunLimits, history_of
from common.privacy import DPState, History, calibrate_noise, epsilon_spent, history_from_json, history_to_json
from common.training import DPPlan

_KEY = "fedward-dp"

__all__ = ["RunAccount", "update_digest"]


class RunAccount:
    """Opened per message; `replay` or `reserve` before training, `settle` before the reply leaves."""

    def __init__(
        self, context: Context, config: RunConfig, privacy: NodePrivacy,
        dataset: DatasetLine, run_id: str, plan: DPPlan, flwr_run_id: str | None = None,
    ) -> None:
        self.context, self.config, self.privacy, self.run_id = context, config, privacy, run_id
        self.flwr_run_id = flwr_run_id
        self.delta = dataset.delta
        self.dataset = dataset
        self.unit = plan.unit  # the accountant's sample rate is the rate at which DP samples units
        self.sample_rate = plan.sample_rate
        self.steps_per_round = plan.steps_per_round
        self.ledger = PrivacyLedger(privacy.ledger) if privacy.ledger else None
        self.sent = SentRounds(privacy.ledger, dataset.name, run_id) if privacy.ledger else None
        self._charge: Charge | None = None
        self._round = 0
        past = self._past()
        self.first_round = not past
        self.target = privacy.epsilon_target(config.epsilon)
        if past:
            self.noise = past[0][0]  # calibrated once, on the run's first round
        else:
            self.noise = calibrate_noise(self.target, self.delta, self.sample_rate, plan.planned_steps)
        self.history: History = past

    def _past(self) -> History:
        if self.ledger is not None:
            return history_of(self.ledger.run_charges(self.dataset.name, self.run_id, self.flwr_run_id))
        record = self.context.state.config_records.get(_KEY)
        return history_from_json(str(record["history"])) if record is not None else []

    def replay(self, server_round: int) -> SentRound | None:
        """What this hospital already sent for this run and round (a plain round), if kept."""
        return self.sent.load(server_round) if self.sent is not None else None

    def reserve(self, server_round: int) -> DPState:
        """The DP state to train with; BudgetExceeded if the hospital's limits refuse the round."""
        if self.privacy.run_cap is not None and self.config.epsilon > self.privacy.run_cap:
            raise BudgetExceeded(
                f"budget: the run asks for epsilon {self.config.epsilon:g}, above this hospital's "
                f"run-epsilon-cap {self.privacy.run_cap:g}"
            )
        self._round = server_round
        if self.ledger is not None:
            limits = RunLimits(cap=self.privacy.run_cap, window_s=self.privacy.cap_window_hours * 3600,
                               target=self.target)
            self._charge = self.ledger.reserve(
                self.dataset, self.run_id, server_round, self.noise, self.sample_rate,
                self.steps_per_round, flwr_run_id=self.flwr_run_id, limits=limits,
            )
        return DPState(self.noise, self.config.max_grad_norm, self.delta, list(self.history))

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
            self.ledger.close()
        else:
            self.context.state.config_records[_KEY] = ConfigRecord({"history": history_to_json(self.history)})

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
