"""DP step / plain step of the default image-cnn model, as it trains: the head on cached scattering features.

    .venv/bin/python benchmarks/image_dp_step.py [--steps 30] [--batch 32 128 256] [--threads 1]

Under training the scattering transform runs once per image (common/tasks/image_cnn/recipe.py),
so one optimiser step is the head's: plain (summed gradient, SGD) against DP in fedward's
`layers` mode (per-sample gradients, Opacus's optimiser clips and noises), same batch,
timed alternately (benchmarks/dp_step.py's method). Target: DP <= 1.5x plain (issue 18).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common.config import RunConfig  # noqa: E402
from common.tasks.image_cnn.model import build_cnn  # noqa: E402
from common.tasks.image_cnn.scattering import scatter  # noqa: E402
from dp_step import dp_step, plain_step, time_pair  # noqa: E402
from report import write_section  # noqa: E402

TARGET = 1.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128, 256], help="128: image-cnn's default expected batch under DP")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(args.threads)
    for batch, (shape, classes, model_name) in ((b, c) for b in args.batch for c in (
            ((1, 28, 28), 2, "scatter"), ((3, 28, 28), 8, "scatter"), ((1, 28, 28), 2, "cnn"))):
        g = torch.Generator().manual_seed(0)
        images, y = torch.rand(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g)
        config = RunConfig(task="image-cnn", model=model_name)
        plain_model, dp_model = build_cnn(shape, classes, config), build_cnn(shape, classes, config)
        if model_name == "scatter":  # what training steps on: the head, fed cached features
            x = scatter(images)
            plain_model, dp_model = plain_model.head, dp_model.head  # type: ignore[assignment]
        else:
            x = images
        plain_s, dp_s = time_pair(plain_step(plain_model, x, y), dp_step(dp_model, x, y, "layers"), args.steps)
        row = {"measure": "image_dp_step", "model": model_name, "input": "x".join(map(str, shape)), "batch": batch,
               "threads": args.threads, "weights": sum(p.numel() for p in plain_model.parameters()),
               "plain_ms": round(plain_s * 1e3, 3), "dp_ms": round(dp_s * 1e3, 3),
               "ratio": round(dp_s / plain_s, 2), "target": TARGET}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.no_write:
        write_section("image-cnn: DP step of the default model", rows,
                      ["model", "input", "batch", "threads", "weights", "plain_ms", "dp_ms", "ratio", "target"],
                      notes="Median of alternating steps. `scatter` (the default): the linear head on scattering "
                            "features, which is what a training step runs (the transform runs once per image, outside "
                            "DP); `cnn`: the GroupNorm CNN on images, the previous default. DP: fedward's `layers` mode "
                            "with Opacus's optimiser (clip, noise); a linear layer on flat inputs keeps its per-sample "
                            "gradients as factors (ghost clipping, common/per_sample.py `Outer`). 128 is image-cnn's "
                            "default expected batch under DP.")


if __name__ == "__main__":
    main()
