"""The DP account of one run at one hospital: reserve a round, train, settle, send.

With a privacy ledger (node config) the run's history lives in the ledger, so a
restarted SuperNode or a resumed run continues it; the round is reserved in
the ledger before training and settled with the digest of the update before it
is sent. Without one, the history lives in the node's context for the length of
one Flower run, as Flower keeps it.
"""

from __future__ import annotations

import hashlib

from flwr.app import ArrayRecord, ConfigRecord, Context

from client.node_privacy import NodePrivacy
from common.config import RunConfig
from common.ledger import Charge, DatasetLine, PrivacyLedger, history_of
from common.privacy import DPState, History, calibrate_noise, epsilon_spent, history_from_json, history_to_json
from common.training import batches_per_epoch, planned_steps

_KEY = "fedward-dp"


class RunAccount:
    """Opened per message; `reserve` before training, `settle` before the reply leaves."""

    def __init__(
        self, context: Context, config: RunConfig, privacy: NodePrivacy,
        dataset: DatasetLine, run_id: str, num_train: int,
    ) -> None:
        self.context, self.config, self.privacy, self.run_id = context, config, privacy, run_id
        self.delta = dataset.delta
        self.dataset = dataset
        self.sample_rate = 1.0 / batches_per_epoch(num_train, config.batch_size)
        self.steps_per_round = config.local_epochs * batches_per_epoch(num_train, config.batch_size)
        self.ledger = PrivacyLedger(privacy.ledger) if privacy.ledger else None
        self._charge: Charge | None = None
        past = self._past()
        if past:
            self.noise = past[0][0]  # calibrated once, on the run's first round
        else:
            target = privacy.epsilon_target(config.epsilon)
            self.noise = calibrate_noise(target, self.delta, self.sample_rate, planned_steps(num_train, config))
        self.history: History = past

    def _past(self) -> History:
        if self.ledger is not None:
            return history_of(self.ledger.charges(self.dataset.fingerprint, self.run_id))
        record = self.context.state.config_records.get(_KEY)
        return history_from_json(str(record["history"])) if record is not None else []

    def reserve(self, server_round: int) -> DPState:
        """The DP state to train with; BudgetExceeded if the ledger refuses the round."""
        if self.ledger is not None:
            self._charge = self.ledger.reserve(
                self.dataset, self.run_id, server_round, self.noise, self.sample_rate,
                self.steps_per_round, self.privacy.run_cap,
            )
        return DPState(self.noise, self.config.max_grad_norm, self.delta, list(self.history))

    def settle(self, update: ArrayRecord) -> float:
        """Record what is about to be sent; the run's epsilon after this round."""
        step = (self.noise, self.sample_rate, self.steps_per_round)
        if self.ledger is not None and self._charge is not None:
            if self.ledger.settle(self._charge, update_digest(update)):
                self.history.append(step)
            self.ledger.close()
        else:
            self.history.append(step)
            self.context.state.config_records[_KEY] = ConfigRecord({"history": history_to_json(self.history)})
        return epsilon_spent(self.history, self.delta)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def update_digest(arrays: ArrayRecord) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays.keys()):
        values = arrays[key].numpy()
        digest.update(key.encode() + b"\0" + str(values.dtype).encode() + str(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()
