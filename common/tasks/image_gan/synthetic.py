"""After the run: a grid of samples and train-on-synthetic, test-on-real accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.config import RunConfig
from common.data import Samples, TaskData, subsample
from common.tasks.image_cnn.model import build_cnn
from common.tasks.image_gan.model import ConditionalGAN
from common.training import evaluate_classifier, fit_classifier

GRID_PER_CLASS = 8
TSTR_EPOCHS = 5


def finish_gan(
    model: nn.Module, data: TaskData | None, config: RunConfig, out_dir: Path, device: torch.device
) -> dict[str, float]:
    assert isinstance(model, ConditionalGAN)
    write_grid(model, out_dir / "samples.png")
    if data is None or data.test is None:
        return {}
    real = subsample(data.train, min(len(data.train), 2000), config.seed)
    synthetic = synthesize(model, len(real), config.seed)
    cnn_config = config.replace(
        task="image-cnn", model="cnn", dp=False, lr=0.01, local_epochs=TSTR_EPOCHS, batch_size=64, strategy="fedavg"
    )
    scores = {}
    for name, train in (("tstr", synthetic), ("trtr", real)):
        cnn = build_cnn(data.input_shape, data.num_classes, cnn_config)
        fit_classifier(cnn, train, data.num_classes, cnn_config, None, device, config.seed)
        scores[f"{name}-accuracy"] = evaluate_classifier(cnn, data.test, device)["accuracy"]
    scores["tstr-ratio"] = scores["tstr-accuracy"] / max(scores["trtr-accuracy"], 1e-9)
    return scores


def synthesize(model: ConditionalGAN, count: int, seed: int) -> Samples:
    """`count` generated images with labels spread evenly over the classes."""
    labels = torch.arange(count) % model.num_classes
    images = model.cpu().sample(labels, torch.Generator().manual_seed(seed))
    return Samples(images.numpy().astype(np.float32), labels.numpy().astype(np.int64))


def write_grid(model: ConditionalGAN, path: Path) -> None:
    """One row per class, GRID_PER_CLASS samples each, as a PNG."""
    labels = torch.arange(model.num_classes).repeat_interleave(GRID_PER_CLASS)
    images = model.cpu().sample(labels, torch.Generator().manual_seed(0)).numpy()
    c, h, w = images.shape[1:]
    grid = images.reshape(model.num_classes, GRID_PER_CLASS, c, h, w)
    grid = grid.transpose(0, 3, 1, 4, 2).reshape(model.num_classes * h, GRID_PER_CLASS * w, c)
    pixels = (np.clip(grid, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
