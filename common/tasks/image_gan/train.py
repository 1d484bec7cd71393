"""GAN rounds: DP-SGD on the discriminator only; the generator never sees data.

The discriminator's loss is the mean over real images plus the mean over generated
ones, and DP-SGD clips them together, per privacy unit, as Opacus's DP-GAN recipe
clips a real and a generated image together (Xie et al. 2018). Each step draws a
fixed number (`batch-size`) of generated images from the round's own random stream
(not tied to the data, nor to the real batch's Poisson size) and takes their mean
discriminator gradient F. Each unit (record, or patient) in the Poisson batch then
contributes clip_C(g_unit + F): its real images' gradient and the generated images'
pull, clipped as one. The sum of those terms is noised and divided by the expected
batch size, exactly as for a classifier (common/training.py). Adding or removing one
unit adds or removes one term, so it moves the sum by at most C; F is the same for
every unit and does not depend on which units were drawn.

Clipping them together matters under DP: a real image's gradient and a generated
image's largely cancel (one pushes the output up, the other down), so clipped
together the clip budget goes to what tells them apart, including the label.
Clipped apart (before 2026-12-01) the budget went to the common part and the
discriminator ignored labels: on 706 PneumoniaMNIST images (one hospital's share),
epsilon 10, 20 epochs, 3 seeds, train-on-synthetic validation accuracy was 0.742 on
every seed (the majority share) against 0.811 (0.769-0.853) clipped together, and the
Frechet distance fell from 29 to 13 (benchmarks notes, docs/benchmarks.md).

The generator's step uses `batch-size` generated images too and learns only from the
DP discriminator (post-processing).
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
from common.per_sample import dense
from common.privacy import DPState, end_private, make_private, plain_gradients
from common.tasks.image_gan.model import LATENT, ConditionalGAN
from common.training import (
    PrivateBatches, TrainOutcome, make_loader, no_units, per_unit_gradients, record_loss_sum_over,
)


def train_gan(
    model: nn.Module, data: Samples, num_classes: int, config: RunConfig,
    dp: DPState | None, device: torch.device, round_seed: int,
) -> TrainOutcome:
    assert isinstance(model, ConditionalGAN)
    torch.manual_seed(round_seed)
    fakes = torch.Generator(device=device).manual_seed(round_seed)  # generated images: not tied to the data
    model.to(device).train()
    gen, disc = model.generator, model.discriminator
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(0.5, 0.999))
    size = config.batch_size
    if dp is None:
        steps, total, seen = 0, 0.0, 0
        loader = make_loader(data, config.batch_size, round_seed)
        for _ in range(config.local_epochs):
            for x, y in loader:
                x, y = x.to(device) * 2 - 1, y.to(device)
                opt_d.zero_grad(set_to_none=True)
                real = F.binary_cross_entropy_with_logits(disc(x, y), torch.ones(len(y), device=device))
                (real + _fake_loss(gen, disc, size, num_classes, device, fakes)).backward()
                opt_d.step()
                _generator_step(gen, disc, opt_g, size, num_classes, device, fakes, private=False)
                total, seen, steps = total + float(real.detach()) * len(y), seen + len(y), steps + 1
        return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=steps)

    batches = PrivateBatches(data, config, round_seed)
    critic, opt_d, loader, engine = make_private(disc, opt_d, batches.loader(config.batch_size), dp, "layers")
    params = opt_d.params  # type: ignore[attr-defined]
    total, seen = 0.0, 0
    for _ in range(config.local_epochs):
        for (units,) in loader:
            opt_d.zero_grad(set_to_none=True)
            pull = _generated_mean_gradient(gen, critic, params, size, num_classes, device, fakes)
            if len(units) == 0:
                no_units(params)  # noise alone: no unit, no term
            else:
                x, y, owner = (t.to(device) for t in batches.records(units))
                losses = F.binary_cross_entropy_with_logits(
                    critic(x * 2 - 1, y), torch.ones(len(y), device=device), reduction="none")
                record_loss_sum_over(losses).backward()
                per_unit_gradients(params, owner, len(units))
                for p, g in zip(params, pull, strict=True):
                    p.grad_sample = dense(p.grad_sample) + g  # each unit's term: its real gradient + F, clipped as one
                total, seen = total + float(losses.detach().sum()), seen + len(y)
            if opt_d.pre_step():  # type: ignore[attr-defined]  # clip, sum, noise, / expected batch size
                opt_d.original_optimizer.step()  # type: ignore[attr-defined]
            _generator_step(gen, critic, opt_g, size, num_classes, device, fakes, private=True)
    end_private(critic)
    dp.history = [tuple(h) for h in engine.accountant.history]
    return TrainOutcome(num_examples=len(data), loss=total / max(seen, 1), steps=batches.plan.steps_per_round)


def _generated(gen: nn.Module, size: int, num_classes: int, device: torch.device,
               fakes: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(num_classes, (size,), device=device, generator=fakes)
    return gen(torch.randn(size, LATENT, device=device, generator=fakes), labels), labels


def _generated_mean_gradient(
    gen: nn.Module, critic: nn.Module, params: list[nn.Parameter], size: int, num_classes: int,
    device: torch.device, fakes: torch.Generator,
) -> list[torch.Tensor]:
    """F: the discriminator's gradient of its mean loss on `size` generated images (a plain gradient:
    the mean of per-sample ones, without forming them)."""
    with torch.no_grad():
        images, labels = _generated(gen, size, num_classes, device, fakes)
    with plain_gradients(critic):
        loss = F.binary_cross_entropy_with_logits(critic(images, labels), torch.zeros(size, device=device))
        return list(torch.autograd.grad(loss, params))


def _fake_loss(gen: nn.Module, critic: nn.Module, size: int, num_classes: int, device: torch.device,
               fakes: torch.Generator) -> torch.Tensor:
    images, labels = _generated(gen, size, num_classes, device, fakes)
    return F.binary_cross_entropy_with_logits(critic(images.detach(), labels), torch.zeros(size, device=device))


def _generator_step(
    gen: nn.Module, critic: nn.Module, opt_g: torch.optim.Optimizer, size: int,
    num_classes: int, device: torch.device, fakes: torch.Generator, private: bool,
) -> None:
    with plain_gradients(critic) if private else nullcontext():
        opt_g.zero_grad(set_to_none=True)
        images, labels = _generated(gen, size, num_classes, device, fakes)
        F.binary_cross_entropy_with_logits(critic(images, labels), torch.ones(size, device=device)).backward()
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
