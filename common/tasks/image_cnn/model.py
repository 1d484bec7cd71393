"""Image classifiers for DP training: scattering features + a small head (the default), or a
small GroupNorm CNN (`model=cnn`).

The default, `scatter`, follows Tramer & Boneh 2021 ("Differentially Private Learning
Needs Better Features"): a fixed scattering transform (common/tasks/image_cnn/scattering.py)
feeds a head that is the only trained part, so DP-SGD's noise spreads over far fewer
weights than an end-to-end CNN's and starts from useful features. The head normalises the
scattering maps per image (GroupNorm without affine weights: no batch statistics, which
would couple records under DP). No BatchNorm anywhere (Opacus needs per-sample
independence), no in-place activations (they break per-sample gradient hooks).
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import RunConfig
from common.errors import ConfigError
from common.tasks.image_cnn.scattering import feature_shape, scatter

MODELS = ("scatter", "scatter-cnn", "cnn")
DEFAULT_MODEL = "scatter"


def _block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(min(8, out_channels // 4), out_channels),
        nn.ReLU(),  # never inplace: it breaks Opacus's per-sample gradient hooks
    ]


class MedCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, width), nn.MaxPool2d(2),
            *_block(width, 2 * width), nn.MaxPool2d(2),
            *_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(4 * width * 4, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x).flatten(1))


class ScatterNet(nn.Module):
    """Fixed scattering features -> `head`, the only trained part.

    `forward` takes images; training and evaluation may instead hand the head features
    computed once per image (`common.tasks.image_cnn.recipe`)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, head: str = "linear", width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = feature_shape(input_shape)
        # per-image normalisation of the scattering maps in 27 groups (Tramer & Boneh's choice)
        norm = nn.GroupNorm(27, channels, affine=False)
        if head == "linear":
            self.head: nn.Module = nn.Sequential(norm, nn.Flatten(), nn.Linear(channels * height * width_px, num_classes))
        else:
            self.head = nn.Sequential(
                norm,
                nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.Tanh(),
                nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(4, width), nn.Tanh(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(scatter(x))


def build_cnn(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    name = config.model or DEFAULT_MODEL
    if name == "cnn":
        return MedCNN(in_channels=input_shape[0], num_classes=num_classes)
    if name in ("scatter", "scatter-cnn"):
        if len(input_shape) != 3 or min(input_shape[1:]) < 2**3:
            raise ConfigError(f"model={name} needs images of at least 8x8 pixels, got shape {input_shape}")
        return ScatterNet(input_shape, num_classes, head="linear" if name == "scatter" else "cnn")
    raise ConfigError(f"model={name!r} is not an image-cnn model; choose one of {', '.join(MODELS)}")
