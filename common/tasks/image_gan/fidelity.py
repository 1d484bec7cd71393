"""Fidelity of synthetic images: a Fréchet distance in a real-data classifier's feature space.

Inception weights cannot be fetched on a hospital's network, so the feature space is the
penultimate layer (the input of the last linear layer) of fedward's own image classifier
trained without DP on real training images. The distance between two image sets is the
Fréchet distance between Gaussians fitted to their features (Heusel et al. 2017, "FID"):

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

A distance alone has no scale, so it is reported beside the same distance between two
disjoint sets of real images of the same size (`fd-real`), and as their ratio (`fd-ratio`:
1 means synthetic images are as close to the reference as other real images are).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torch import nn

from common.data import Samples

BATCH = 256


@torch.no_grad()
def penultimate_features(model: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """The input of `model`'s last linear layer for each image, as float64 rows."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no linear layer whose input could serve as features")
    captured: list[torch.Tensor] = []
    hook = last[-1].register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1).cpu()))
    try:
        model.to(device).eval()
        for start in range(0, len(images), BATCH):
            model(torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH])).to(device))
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of `a` and of `b`."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 feature rows per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # a singular product (e.g. collapsed samples) is handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: nudge both covariances (as pytorch-fid does)
        eps = np.eye(len(cov_a)) * 1e-6
        root = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))
    return max(distance, 0.0)  # round-off can leave a tiny negative number for identical sets


def fidelity(
    extractor: nn.Module, synthetic: Samples, real: Samples, reference: Samples, device: torch.device
) -> dict[str, float]:
    """`fd`: synthetic vs reference; `fd-real`: real (not used to train `extractor`) vs reference."""
    ref = penultimate_features(extractor, reference.x, device)
    fd = frechet_distance(penultimate_features(extractor, synthetic.x, device), ref)
    fd_real = frechet_distance(penultimate_features(extractor, real.x, device), ref)
    return {"fd": fd, "fd-real": fd_real, "fd-ratio": fd / max(fd_real, 1e-12)}
