"""A cheap probe for choosing GAN settings: one centralised DP GAN on the pooled PneumoniaMNIST
train split at epsilon 10 (delta 1e-5), scored on the VALIDATION split (TSTR and fidelity, as
common/tasks/image_gan/synthetic.py scores a run), plus the discriminator's mean output on real and
generated validation images. Minutes where a federated run takes 10-40 on 2 shared cores; a proxy,
not the federated result (`benchmarks/gan_tstr.py --score-on validation` is).

    .venv/bin/python benchmarks/gan_pooled_probe.py [--batch 32] [--epochs 3] [--lr 2e-4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RunConfig  # noqa: E402
from common.tasks import load_data, resolve  # noqa: E402
from common.tasks.image_gan.model import build_gan  # noqa: E402
from common.tasks.image_gan.synthetic import score_gan  # noqa: E402
from common.tasks.image_gan.train import train_gan  # noqa: E402
from inprocess import pooled_dp  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = resolve(RunConfig(task="image-gan", data_path=str(DATA), dp=True, epsilon=10.0, seed=args.seed,
                               batch_size=args.batch, lr=args.lr, local_epochs=args.epochs))
    data = load_data(config)
    assert data.validation is not None, f"{DATA} has no val_images"
    dp = pooled_dp(config, data.train, args.epochs)
    assert dp is not None
    gan = build_gan(data.input_shape, data.num_classes, config)
    start = time.perf_counter()
    train_gan(gan, data.train, data.num_classes, config, dp, torch.device("cpu"), args.seed)
    val = data.validation
    with torch.no_grad():
        x, y = torch.from_numpy(val.x) * 2 - 1, torch.from_numpy(val.y)
        fake = gan.sample(y, torch.Generator().manual_seed(0)) * 2 - 1
        d_real = float(torch.sigmoid(gan.discriminator.eval()(x, y)).mean())
        d_fake = float(torch.sigmoid(gan.discriminator(fake, y)).mean())
    scores = score_gan(gan, data.train, val, config, torch.device("cpu"))
    print(json.dumps({"batch": args.batch, "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                      "noise": dp.noise_multiplier, "epsilon": dp.epsilon, "d_real": d_real, "d_fake": d_fake,
                      **scores, "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
