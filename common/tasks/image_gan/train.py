"""GAN rounds: DP-SGD on the discriminator only; the generator never sees data.

Each step sums the discriminator's real and fake losses before one backward pass
(Opacus then clips one per-sample gradient per real image). During the generator
step the discriminator's per-sample gradients are switched off; the generator learns only from
the DP discriminator, which is post-processing.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.config import RunConfig
from common.data import Samples
from common.metrics import auroc
from common.privacy import DPState, end_private, make_private, plain_gradients
from common.tasks.image_gan.model import LATENT, ConditionalGAN
from common.training import TrainOutcome, make_loader


def train_gan(
    model: nn.Module, data: Samples, num_classes: int, config: RunConfig,
    dp: DPState | None, device: torch.device, round_seed: int,
) -> TrainOutcome:
    assert isinstance(model, ConditionalGAN)
    torch.manual_seed(round_seed)
    model.to(device).train()
    gen, disc = model.generator, model.discriminator
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(0.5, 0.999))
    loader = make_loader(data, config.batch_size, round_seed)
    critic: nn.Module = disc
    if dp is not None:
        critic, opt_d, loader, engine = make_private(disc, opt_d, loader, dp, "layers")
    total, seen, steps = 0.0, 0, 0
    for _ in range(config.local_epochs):
        for x, y in loader:
            if len(y) == 0:
                continue
            x, y = x.to(device) * 2 - 1, y.to(device)
            n = len(y)
            fake_y = torch.randint(num_classes, (n,), device=device)
            fake = gen(torch.randn(n, LATENT, device=device), fake_y)
            opt_d.zero_grad(set_to_none=True)
            loss_d = F.binary_cross_entropy_with_logits(critic(x, y), torch.ones(n, device=device))
            loss_d = loss_d + F.binary_cross_entropy_with_logits(
                critic(fake.detach(), fake_y), torch.zeros(n, device=device)
            )
            loss_d.backward()
            opt_d.step()
            _generator_step(gen, critic, opt_g, n, num_classes, device, dp is not None)
            total += float(loss_d.detach()) * n
            seen += n
            steps += 1
    if dp is not None:
        end_private(critic)
        dp.history = [tuple(h) for h in engine.accountant.history]
    return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=steps)


def _generator_step(
    gen: nn.Module, critic: nn.Module, opt_g: torch.optim.Optimizer, n: int,
    num_classes: int, device: torch.device, private: bool,
) -> None:
    with plain_gradients(critic) if private else nullcontext():
        opt_g.zero_grad(set_to_none=True)
        labels = torch.randint(num_classes, (n,), device=device)
        logits = critic(gen(torch.randn(n, LATENT, device=device), labels), labels)
        F.binary_cross_entropy_with_logits(logits, torch.ones(n, device=device)).backward()
        opt_g.step()


@torch.no_grad()
def evaluate_gan(model: nn.Module, data: Samples, device: torch.device) -> dict[str, float]:
    """How well the discriminator tells held-out real images from generated ones."""
    assert isinstance(model, ConditionalGAN)
    if len(data) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "auroc": math.nan, "macro-f1": math.nan}
    model.to(device).eval()
    x = torch.from_numpy(data.x).to(device) * 2 - 1
    y = torch.from_numpy(data.y).to(device)
    generator = torch.Generator().manual_seed(0)
    fake = model.sample(y, generator) * 2 - 1
    logits = torch.cat([model.discriminator(x, y), model.discriminator(fake, y)]).cpu()
    truth = torch.cat([torch.ones(len(y)), torch.zeros(len(y))])
    loss = float(F.binary_cross_entropy_with_logits(logits, truth))
    p_real = torch.sigmoid(logits).numpy()
    proba = np.stack([1 - p_real, p_real], axis=1)
    labels = truth.numpy().astype(np.int64)
    return {
        "loss": loss,
        "accuracy": float(((p_real > 0.5) == labels).mean()),
        "auroc": auroc(labels, proba),
        "macro-f1": math.nan,
    }
