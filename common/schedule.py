"""The local learning rate of each round of a run (run config `lr-schedule`).

`constant`: every round trains at `lr`. `cosine`: round r of R trains at
lr x (1 + cos(pi (r - 1) / R)) / 2, from `lr` in round 1 down to about lr x 2.5 / R^2 in
round R; within a round the rate is constant. Under DP the schedule is post-processing: the
clipping norm, the noise and the sampling, hence the epsilon, do not depend on the rate.
"""

from __future__ import annotations

import math

from common.config import RunConfig


def round_lr(config: RunConfig, server_round: int) -> float:
    """The lr of `server_round` (1-based; clamped to the run's rounds) of a resolved config."""
    if config.lr_schedule != "cosine" or config.num_server_rounds < 1:
        return config.lr
    rounds = config.num_server_rounds
    done = min(max(server_round, 1), rounds) - 1
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * done / rounds))


def for_round(config: RunConfig, server_round: int) -> RunConfig:
    """The config a hospital trains `server_round` with: its lr set by the schedule."""
    lr = round_lr(config, server_round)
    return config if lr == config.lr else config.replace(lr=lr)
