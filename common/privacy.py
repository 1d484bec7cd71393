"""Sample-level DP-SGD with Opacus: noise calibration, accounting, wrapping.

The noise multiplier is derived once for the whole run from the hospital's
(epsilon, delta), the planned number of optimiser steps and the sample rate
that Opacus itself accounts with (1 / batches per epoch). The accountant's
history, a list of (noise_multiplier, sample_rate, steps), is carried across
rounds, so the epsilon reported after round r is the cumulative one.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader

from common.errors import ConfigError

History = list[tuple[float, float, int]]


@dataclass
class DPState:
    """What a hospital's DP training needs and what it carries between rounds."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    history: History = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return epsilon_spent(self.history, self.delta)


def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Noise multiplier that spends exactly (epsilon, delta) over `steps` RDP steps."""
    if epsilon <= 0:
        raise ConfigError(f"epsilon={epsilon} must be > 0")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate {sample_rate} must be in (0, 1]")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant="rdp", epsilon_tolerance=0.005,
            )
        )
    except ValueError as err:
        raise ConfigError(
            f"epsilon={epsilon}, delta={delta}: no noise level reaches this budget over "
            f"{steps} steps ({err}); raise epsilon or delta, or train fewer rounds"
        ) from err


def epsilon_spent(history: History, delta: float) -> float:
    """Cumulative epsilon of every step in `history`, by Opacus's RDP accountant.

    Entries with the same (noise, sample rate) are merged by adding their steps,
    which is exact for RDP (k steps of one mechanism cost k times its RDP) and
    keeps a long ledger's accounting fast.
    """
    if not history:
        return 0.0
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        merged[(float(noise), float(rate))] = merged.get((float(noise), float(rate)), 0) + int(steps)
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, steps) for (noise, rate), steps in merged.items()]
    return float(accountant.get_epsilon(delta=delta))


def make_private(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    state: DPState,
    grad_sample_mode: str = "hooks",
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader, PrivacyEngine]:
    """Wrap for DP-SGD with Poisson sampling; the accountant continues `state.history`.

    The caller keeps using `module` itself for its state dict, so weight keys never
    carry Opacus's `_module.` prefix. `grad_sample_mode` is Opacus's way of computing
    per-sample gradients: "hooks" (its default) or "ew" (torch's expanded weights,
    faster for the CNN, LSTM and GRU here: benchmarks/dp_step.py).
    """
    # Known, harmless for us: secure_mode needs torchcsprng (no build for 3.11), and
    # the first layer's inputs never require gradients.
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = [tuple(h) for h in state.history]
    wrapped, dp_optimizer, dp_loader = engine.make_private(
        module=module, optimizer=optimizer, data_loader=loader,
        noise_multiplier=state.noise_multiplier, max_grad_norm=state.max_grad_norm,
        poisson_sampling=True, grad_sample_mode=grad_sample_mode,
    )
    return wrapped, dp_optimizer, dp_loader, engine


def history_to_json(history: History) -> str:
    return json.dumps([list(h) for h in history])


def history_from_json(text: str) -> History:
    return [(float(n), float(q), int(s)) for n, q, s in json.loads(text)]
