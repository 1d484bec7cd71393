"""How image-cnn trains and scores its models: scattering features computed once per image.

For a `ScatterNet` the fixed scattering transform runs once per image of a hospital's
split (cached per process by content, common/tasks/image_cnn/scattering.py), and the
shared classifier training (common/training.py: DP-SGD, FedProx, the privacy unit) trains
the head alone on those features. The transform has no weights and reads one image at a
time, so this is the same DP-SGD, with the same accountant, sample rate and steps, as
training the whole model on the images; only faster. Other models train on the images.
Per-sample gradients come from fedward's per-layer backward ('layers', common/per_sample.py).
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import RunConfig
from common.data import Samples
from common.privacy import DPState
from common.tasks.image_cnn.model import ScatterNet
from common.tasks.image_cnn.scattering import cached_features
from common.training import TrainOutcome, evaluate_classifier, fit_classifier, predict_proba, scores_of

def _as_features(data: Samples) -> Samples:
    return Samples(cached_features(data.x), data.y, data.groups, data.patients)


def fit_image_classifier(
    model: nn.Module, data: Samples, num_classes: int, config: RunConfig, dp: DPState | None,
    device: torch.device, round_seed: int, grad_sample_mode: str = "layers",
) -> TrainOutcome:
    if isinstance(model, ScatterNet):
        return fit_classifier(model.head, _as_features(data), num_classes, config, dp, device, round_seed,
                              grad_sample_mode=grad_sample_mode)
    return fit_classifier(model, data, num_classes, config, dp, device, round_seed, grad_sample_mode=grad_sample_mode)


def evaluate_image_classifier(model: nn.Module, data: Samples, device: torch.device) -> dict[str, float]:
    if isinstance(model, ScatterNet):
        return scores_of(data.y, predict_proba(model.head, cached_features(data.x), device))
    return evaluate_classifier(model, data, device)
