"""Sample-level DP-SGD with Opacus: noise calibration, accounting, wrapping.

The noise multiplier is derived once for the whole run from the hospital's
(epsilon, delta), the planned number of optimiser steps and the sample rate
that Opacus itself accounts with (1 / batches per epoch). The accountant's
history, a list of (noise_multiplier, sample_rate, steps), is carried across
rounds, so the epsilon reported after round r is the cumulative one.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader

from common.errors import ConfigError
from common.per_sample import Outer, PerSampleLayers

History = list[tuple[float, float, int]]


@dataclass
class DPState:
    """What a hospital's DP training needs and what it carries between rounds."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    history: History = field(default_factory=list)
    # each class's weight (<= 1) on a unit's gradient after clipping (common/class_prior.py
    # `training_weights`), or None: every unit weight 1
    class_weights: list[float] | None = None

    @property
    def epsilon(self) -> float:
        return epsilon_spent(self.history, self.delta)


@functools.lru_cache(maxsize=64)
def calibrate_noise(
    epsilon: float, delta: float, sample_rate: float, steps: int, released: tuple[tuple[float, float, int], ...] = (),
) -> float:
    """Noise multiplier that spends exactly (epsilon, delta) over `steps` RDP steps, together with
    the other releases of the run in `released` (entries of the same RDP history, e.g. the class
    histogram of common/class_prior.py), so the whole account meets epsilon.

    Cached: a simulation worker calibrates once for all virtual hospitals of the
    same size, instead of ~0.7 s of Opacus's binary search for each."""
    if epsilon <= 0:
        raise ConfigError(f"epsilon={epsilon} must be > 0")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate {sample_rate} must be in (0, 1]")
    if released:
        return _calibrate_with(epsilon, delta, sample_rate, steps, released)
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


def _calibrate_with(
    epsilon: float, delta: float, sample_rate: float, steps: int, released: tuple[tuple[float, float, int], ...],
    tolerance: float = 0.005,
) -> float:
    """Opacus's binary search (`get_noise_multiplier`: the smallest noise whose epsilon is within
    `tolerance` below the target) over an RDPAccountant whose history holds `released` and then
    the steps."""
    def spent(noise: float) -> float:
        accountant = RDPAccountant()
        accountant.history = [*released, (noise, sample_rate, steps)]
        with warnings.catch_warnings():  # "optimal order is the largest alpha" at the search's far end
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(delta=delta))

    floor = spent(1e6)  # the other releases alone: steps at this noise cost ~nothing
    if floor >= epsilon:
        raise ConfigError(
            f"epsilon={epsilon}, delta={delta}: the run's other releases alone spend epsilon {floor:.3f}; "
            "raise epsilon, or turn off balanced-decision"
        )
    low, high = 0.0, 10.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
    eps_high = spent(high)
    while epsilon - eps_high > tolerance:
        middle = (low + high) / 2
        eps_middle = spent(middle)
        if eps_middle < epsilon:
            high, eps_high = middle, eps_middle
        else:
            low = middle
        if high - low < 1e-9:
            break
    return high


def epsilon_spent(history: History, delta: float) -> float:
    """Cumulative epsilon of every step in `history`, as Opacus's RDP accountant gives it.

    The same sum as `RDPAccountant.get_privacy_spent` (RDP of each entry at the
    accountant's orders, converted at `delta`), but the RDP of one step of each
    (noise, sample rate) is computed once per process: RDP is exactly linear in
    steps (Opacus's `compute_rdp` multiplies by them), and computing it is ~0.1 s
    in pure Python, paid again at every round of every hospital otherwise.
    """
    if not history:
        return 0.0
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        merged[(float(noise), float(rate))] = merged.get((float(noise), float(rate)), 0) + int(steps)
    rdp = sum(_rdp_of_one_step(noise, rate) * steps for (noise, rate), steps in merged.items())
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=256)
def _rdp_of_one_step(noise: float, sample_rate: float) -> np.ndarray:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    rdp.setflags(write=False)  # shared by every caller
    return rdp


class LayersPrivacyEngine(PrivacyEngine):
    """Opacus's engine for mode "layers": fedward's allowlist of layers
    (`PerSampleLayers`, which refuses any trainable layer it has no per-sample gradient
    for) replaces Opacus's module validation, which refuses torch's LSTM/GRU because
    Opacus's own hooks cannot handle them; every other layer Opacus validates is
    outside the allowlist, so nothing it would refuse gets through."""

    def validate(self, *, module: torch.nn.Module, optimizer: object, data_loader: object) -> None:
        if not module.training:
            raise ConfigError("DP training needs the model in training mode (call model.train() first)")


class _FactoredClipping:
    """Opacus's DPOptimizer, taught fedward's factored per-sample gradients (`Outer`: a Linear
    weight's, on 2-D inputs): their norms and clipped sum come from the factors; every other
    parameter's per-sample gradients are clipped exactly as Opacus does. Same clip factor per
    sample over all parameters, same sum, noise and scaling; where `unit_weights` is set (one
    value <= 1 per unit, common/training.py), each unit's clipped gradient is scaled by it."""

    @property
    def grad_samples(self) -> list:  # type: ignore[override]
        return [p.grad_sample if isinstance(p.grad_sample, Outer) else self._get_flat_grad_sample(p)  # type: ignore[attr-defined]
                for p in self.params]  # type: ignore[attr-defined]

    @property
    def accumulated_iterations(self) -> int:
        return 1  # fedward steps once per batch (no virtual steps)

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        if len(samples[0]) == 0:
            factors = torch.zeros((0,), device=self.params[0].device)  # type: ignore[attr-defined]
        else:
            norms = [s.norms() if isinstance(s, Outer) else s.reshape(len(s), -1).norm(2, dim=-1) for s in samples]
            total = torch.stack([n.to(norms[0].device) for n in norms], dim=1).norm(2, dim=1)
            factors = (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0)  # type: ignore[attr-defined]
            weights = getattr(self, "unit_weights", None)
            if weights is not None:  # each <= 1, after clipping: a unit still moves the sum by <= C
                factors = factors * weights.to(factors.device).clamp(0.0, 1.0)
        for p, sample in zip(self.params, samples, strict=True):  # type: ignore[attr-defined]
            if isinstance(sample, Outer):
                grad = sample.weighted_sum(factors.to(sample.grads.device))
            else:
                grad = torch.einsum("i,i...", factors.to(sample.device).to(p.dtype), sample.to(p.dtype))
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad


def make_private(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    state: DPState,
    grad_sample_mode: str = "hooks",
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader, PrivacyEngine]:
    """Wrap for DP-SGD with Poisson sampling; the accountant continues `state.history`.

    The caller keeps using `module` itself for its state dict, so weight keys never
    carry Opacus's `_module.` prefix. `grad_sample_mode` says how per-sample gradients
    are computed: Opacus's "hooks" (its default) or "ew" (torch's expanded weights),
    or "layers", fedward's own per-layer backward
    (common/per_sample.py; fastest for the CNN, the LSTM/GRU and the GAN discriminator:
    benchmarks/dp_step.py), which Opacus's optimiser clips and noises as usual. With
    "layers" call `end_private` after training to give the model its own forwards back.
    """
    # Known, harmless for us: secure_mode needs torchcsprng (no build for 3.11), and
    # the first layer's inputs never require gradients.
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    layers = PerSampleLayers(module) if grad_sample_mode == "layers" else None  # refuses unsupported layers
    engine = (LayersPrivacyEngine if layers else PrivacyEngine)(accountant="rdp")
    engine.accountant.history = [tuple(h) for h in state.history]
    wrapped, dp_optimizer, dp_loader = engine.make_private(
        module=module, optimizer=optimizer, data_loader=loader,
        noise_multiplier=state.noise_multiplier, max_grad_norm=state.max_grad_norm,
        poisson_sampling=True, grad_sample_mode="no_op" if layers else grad_sample_mode,
    )
    if layers is not None:
        layers.attach()
        wrapped.per_sample_layers = layers
        factored_clipping(dp_optimizer)
    return wrapped, dp_optimizer, dp_loader, engine


def factored_clipping(optimizer: torch.optim.Optimizer) -> None:
    """Teach an Opacus DPOptimizer fedward's factored per-sample gradients (mode "layers")."""
    base = type(optimizer)
    if not issubclass(base, _FactoredClipping):
        optimizer.__class__ = type(f"Factored{base.__name__}", (_FactoredClipping, base), {})


@contextmanager
def plain_gradients(wrapped: torch.nn.Module) -> Iterator[None]:
    """No per-sample gradients inside the block, whatever the mode (a GAN's generator step)."""
    layers: PerSampleLayers | None = getattr(wrapped, "per_sample_layers", None)
    if layers is not None:
        with layers.paused():
            yield
        return
    wrapped.disable_hooks()  # type: ignore[operator]
    try:
        yield
    finally:
        wrapped.enable_hooks()  # type: ignore[operator]


def end_private(wrapped: torch.nn.Module) -> None:
    """The model's own forwards back after training in mode "layers" (no-op otherwise)."""
    layers: PerSampleLayers | None = getattr(wrapped, "per_sample_layers", None)
    if layers is not None:
        layers.detach()


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """What an (epsilon, delta) guarantee per record says about a group of k records (one patient's):
    (k epsilon, k e^((k-1) epsilon) delta), the standard group-privacy bound (Dwork & Roth 2014,
    Lemma 2.2 with its delta term); a delta of 1 or more is no guarantee at all."""
    if k <= 1:
        return epsilon, delta
    exponent = (k - 1) * epsilon
    group_delta = k * delta * math.exp(exponent) if exponent < 700 else math.inf
    return k * epsilon, min(group_delta, math.inf)


def history_to_json(history: History) -> str:
    return json.dumps([list(h) for h in history])


def history_from_json(text: str) -> History:
    return [(float(n), float(q), int(s)) for n, q, s in json.loads(text)]
