"""The hospital's DP state for one run, kept in the node's context between rounds.

The noise multiplier is calibrated on the first round for the whole run and
stored; the accountant's history grows by each round's steps.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from common.config import RunConfig
from common.privacy import DPState, calibrate_noise, history_from_json, history_to_json
from common.training import batches_per_epoch, planned_steps

_KEY = "fedward-dp"


def load_dp_state(context: Context, config: RunConfig, num_train: int) -> DPState:
    record = context.state.config_records.get(_KEY)
    if record is not None:
        return DPState(
            noise_multiplier=float(record["noise-multiplier"]),
            max_grad_norm=config.max_grad_norm,
            delta=config.delta,
            history=history_from_json(str(record["history"])),
        )
    sample_rate = 1.0 / batches_per_epoch(num_train, config.batch_size)
    noise = calibrate_noise(config.epsilon, config.delta, sample_rate, planned_steps(num_train, config))
    return DPState(noise, config.max_grad_norm, config.delta)


def save_dp_state(context: Context, state: DPState) -> None:
    context.state.config_records[_KEY] = ConfigRecord(
        {"noise-multiplier": state.noise_multiplier, "history": history_to_json(state.history)}
    )
