"""A small CNN with GroupNorm (no BatchNorm: Opacus needs per-sample independence)."""

from __future__ import annotations

from torch import nn

from common.config import RunConfig


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


def build_cnn(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    return MedCNN(in_channels=input_shape[0], num_classes=num_classes)
