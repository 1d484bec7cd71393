"""After the run: a grid of samples, train-on-synthetic / test-on-real accuracy, and fidelity.

TSTR: fedward's image CNN trained (no DP) on synthetic images only, scored on real held-out
images, against the same CNN trained on as many real training images (TRTR). Fidelity
(common/tasks/image_gan/fidelity.py): the Fréchet distance, in the TRTR CNN's penultimate
features, between synthetic images and the real reference set, beside the distance between
real training images the CNN never saw and the same reference set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.config import RunConfig
from common.data import Samples, TaskData, _split_index, subsample
from common.tasks.image_cnn.model import build_cnn
from common.tasks.image_gan.fidelity import fidelity
from common.tasks.image_gan.model import ConditionalGAN
from common.training import evaluate_classifier, fit_classifier

GRID_PER_CLASS = 8
TSTR_EPOCHS = 5
TSTR_SAMPLES = 2000


def finish_gan(
    model: nn.Module, data: TaskData | None, config: RunConfig, out_dir: Path, device: torch.device
) -> dict[str, float]:
    assert isinstance(model, ConditionalGAN)
    write_grid(model, out_dir / "samples.png")
    if data is None or data.test is None:
        return {}
    return score_gan(model, data.train, data.test, config, device)


def score_gan(
    model: ConditionalGAN, train: Samples, reference: Samples, config: RunConfig, device: torch.device
) -> dict[str, float]:
    """TSTR, TRTR and their ratio on `reference` (the test split; the validation split while tuning),
    and the fidelity scores against `reference`."""
    real, unused = _split_off(train, TSTR_SAMPLES, config.seed)
    synthetic = synthesize(model, len(real), config.seed)
    cnn_config = config.replace(
        task="image-cnn", model="cnn", dp=False, lr=0.01, local_epochs=TSTR_EPOCHS, batch_size=64, strategy="fedavg",
        min_local_steps=0,  # the fixed TSTR recipe: exactly TSTR_EPOCHS epochs
    )
    scores: dict[str, float] = {}
    for name, samples in (("tstr", synthetic), ("trtr", real)):
        cnn = build_cnn(real.x.shape[1:], model.num_classes, cnn_config)
        fit_classifier(cnn, samples, model.num_classes, cnn_config, None, device, config.seed)
        scores[f"{name}-accuracy"] = evaluate_classifier(cnn, reference, device)["accuracy"]
    scores["tstr-ratio"] = scores["tstr-accuracy"] / max(scores["trtr-accuracy"], 1e-9)
    held, target = _fidelity_sets(unused, reference, config.seed)
    fakes = synthesize(model, len(held), config.seed + 1, labels=held.y)  # the real set's class mix
    return scores | fidelity(cnn, fakes, held, target, device)  # `cnn`: the TRTR classifier, real data only


def _split_off(samples: Samples, count: int, seed: int) -> tuple[Samples, Samples]:
    """`subsample(samples, count, seed)` and the samples it left out."""
    if len(samples) <= count:
        return samples, samples.take(np.arange(0))
    index, rest = _split_index(samples.y, seed=seed, train_size=count)
    return samples.take(np.sort(index)), samples.take(np.sort(rest))


def _fidelity_sets(unused: Samples, reference: Samples, seed: int) -> tuple[Samples, Samples]:
    """Two disjoint real sets of one size: unused training images and `reference`, or, when
    every training image trained the classifier, the two halves of `reference`."""
    if len(unused) >= 2:
        n = min(len(unused), len(reference))
        return subsample(unused, n, seed), subsample(reference, n, seed)
    return _split_off(reference, len(reference) // 2, seed)


def synthesize(model: ConditionalGAN, count: int, seed: int, labels: np.ndarray | None = None) -> Samples:
    """`count` generated images with the given labels, else labels spread evenly over the classes."""
    classes = torch.arange(count) % model.num_classes if labels is None else torch.from_numpy(labels[:count]).long()
    images = model.cpu().sample(classes, torch.Generator().manual_seed(seed))
    return Samples(images.numpy().astype(np.float32), classes.numpy().astype(np.int64))


def write_grid(model: ConditionalGAN, path: Path) -> None:
    """One row per class, GRID_PER_CLASS samples each, as a PNG."""
    labels = torch.arange(model.num_classes).repeat_interleave(GRID_PER_CLASS)
    images = model.cpu().sample(labels, torch.Generator().manual_seed(0)).numpy()
    c, h, w = images.shape[1:]
    grid = images.reshape(model.num_classes, GRID_PER_CLASS, c, h, w)
    grid = grid.transpose(0, 3, 1, 4, 2).reshape(model.num_classes * h, GRID_PER_CLASS * w, c)
    pixels = (np.clip(grid, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
