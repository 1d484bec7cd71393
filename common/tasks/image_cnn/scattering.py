"""Scattering features of images: a fixed (untrained) front end, computed once per image.

A 2-D scattering transform (Mallat; kymatio's ScatteringTorch2D, J=2, 8 angles) maps a
(C, H, W) image to (81 C, H/4, W/4) wavelet moduli. It has no trainable parameter, so it
costs no privacy and needs no per-sample gradient: under DP-SGD only the head behind it is
trained (Tramer & Boneh 2021, "Differentially Private Learning Needs Better Features").
Only kymatio's 2-D torch front end is imported: `import kymatio.torch` fails on current
scipy (its 3-D filters use scipy.special.sph_harm, which scipy removed).

The transform's filters are torch buffers; they are kept outside any model (one transform
per image shape, per process), so a model's state dict, and what a hospital sends, holds
trained weights only.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import numpy as np
import torch

J, ANGLES = 2, 8
ORDER_COEFFICIENTS = 1 + J * ANGLES + ANGLES * ANGLES * J * (J - 1) // 2  # 81 maps per input channel
_CHUNK = 256
_CACHE_BYTES = 1 << 30  # features kept per process (a simulation serves several hospitals from one)


def feature_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of the scattering features of a (C, H, W) image."""
    channels, height, width = input_shape
    return channels * ORDER_COEFFICIENTS, -(-height // 2**J), -(-width // 2**J)


@functools.lru_cache(maxsize=4)
def _transform(height: int, width: int) -> torch.nn.Module:
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=J, shape=(height, width), L=ANGLES)


@torch.no_grad()
def scatter(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, 81 C, H/4, W/4) scattering features (on x's device)."""
    n, channels, height, width = x.shape
    transform = _transform(height, width).to(x.device)
    out = [transform(x[i : i + _CHUNK].contiguous()).flatten(1, 2) for i in range(0, n, _CHUNK)]
    if not out:
        return x.new_zeros((0, *feature_shape((channels, height, width))))
    return torch.cat(out)


_FEATURES: OrderedDict[str, np.ndarray] = OrderedDict()


def cached_features(x: np.ndarray) -> np.ndarray:
    """Scattering features of a float32 (N, C, H, W) array, kept per process by content: a
    hospital's training split is transformed once per run, not once per round."""
    key = hashlib.blake2b(np.ascontiguousarray(x).view(np.uint8), digest_size=16).hexdigest() + str(x.shape)
    hit = _FEATURES.get(key)
    if hit is not None:
        _FEATURES.move_to_end(key)
        return hit
    features = scatter(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    _FEATURES[key] = features
    while sum(f.nbytes for f in _FEATURES.values()) > _CACHE_BYTES and len(_FEATURES) > 1:
        _FEATURES.popitem(last=False)
    return features
