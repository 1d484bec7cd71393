"""A class-conditional DCGAN; both networks live in one module with prefixed keys.

The server aggregates `generator.*` and `discriminator.*` as one ArrayRecord, so
Flower's built-in strategies apply unchanged. GroupNorm, no in-place activations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.config import RunConfig

LATENT = 64


class Generator(nn.Module):
    def __init__(self, channels: int, num_classes: int, size: int, width: int = 32) -> None:
        super().__init__()
        self.num_classes, self.base = num_classes, size // 4
        self.project = nn.Linear(LATENT + num_classes, 2 * width * self.base * self.base)
        self.body = nn.Sequential(
            nn.GroupNorm(8, 2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.GroupNorm(8, width), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, F.one_hot(y, self.num_classes).float()], dim=1))
        return self.body(h.view(len(z), -1, self.base, self.base))


class Discriminator(nn.Module):
    def __init__(self, channels: int, num_classes: int, size: int, width: int = 32) -> None:
        super().__init__()
        self.size = size
        self.label_map = nn.Embedding(num_classes, size * size)
        self.body = nn.Sequential(
            nn.Conv2d(channels + 1, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels = self.label_map(y).view(len(y), 1, self.size, self.size)
        return self.body(torch.cat([x, labels], dim=1)).squeeze(1)


class ConditionalGAN(nn.Module):
    def __init__(self, channels: int, num_classes: int, size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.generator = Generator(channels, num_classes, size)
        self.discriminator = Discriminator(channels, num_classes, size)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] for the given class labels."""
        z = torch.randn(len(labels), LATENT, generator=generator)
        return (self.generator.eval()(z.to(labels.device), labels) + 1) / 2


def build_gan(input_shape: tuple[int, ...], num_classes: int, config: RunConfig) -> nn.Module:
    return ConditionalGAN(channels=input_shape[0], num_classes=num_classes, size=input_shape[-1])
