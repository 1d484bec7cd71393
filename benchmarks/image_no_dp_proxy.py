"""A fast proxy of image-cnn FedAvg without DP, beside centralised, to scan no-DP settings on validation.

    .venv/bin/python benchmarks/image_no_dp_proxy.py --data bloodmnist --seeds 0 1 2 --lr 0.01 0.001 \
        [--rounds 10] [--batch-size 32] [--no-class-weighting | --capped-weights] [--local-epochs 2] \
        [--server avg|avgm|adam --server-lr 1 --server-momentum 0.7] [--fed-only | --central-only]

The default model (`scatter`) trains only its head on scattering features, so the features are
computed once per image (cached in /tmp) and each hospital's round is fedward's own
`fit_classifier` on them: the hospitals' shares are fedward's Dirichlet(0.5) partition
(common/partition.py) and their 75% training splits (common/data.py local_split), aggregation
the examples-weighted mean of FedAvg. No Flower, no ledger, no evaluation rounds: seconds instead of
minutes a run. Centralised: the same head and code on the whole train split for rounds x 1 epochs.
Prints one JSON line a run with validation and test accuracy (choose on validation only) and the
federated model's validation accuracy after every round. The real round loop:
benchmarks/medmnist_image.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import RunConfig  # noqa: E402
from common.data import Samples, local_split  # noqa: E402
from common.partition import partition_indices  # noqa: E402
from common.tasks import get_task, load_data, resolve  # noqa: E402
from common.tasks.image_cnn.scattering import cached_features  # noqa: E402
from common.training import fit_classifier, predict_proba  # noqa: E402
from common.metrics import classification_metrics  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
HOSPITALS, CPU = 5, torch.device("cpu")


def features(name: str) -> dict[str, np.ndarray]:
    cache = Path(f"/tmp/fedward-proxy-{name}.npz")
    if not cache.exists():
        data = load_data(RunConfig(task="image-cnn", data_path=str(DATA / "medmnist" / f"{name}.npz")))
        np.savez(cache, **{f"{split}_{k}": v for split, s in (("train", data.train), ("val", data.validation),
                                                                ("test", data.test))
                           for k, v in (("x", cached_features(s.x)), ("y", s.y))})
    return dict(np.load(cache))


def hospital_splits(config: RunConfig, y: np.ndarray) -> list[np.ndarray]:
    """Each hospital's training indices into the train split, as `fedward simulate` draws them."""
    positions = Samples(np.zeros((len(y), 1), np.float32), y)
    out = []
    for part in partition_indices(positions, config.partition_spec, HOSPITALS, config.seed):
        train, _ = local_split(Samples(part.reshape(-1, 1).astype(np.float32), y[part]), config.test_fraction,
                               config.seed)
        out.append(train.x[:, 0].astype(np.int64))
    return out


def accuracy(head: torch.nn.Module, x: np.ndarray, y: np.ndarray, key: str = "accuracy") -> float:
    return round(classification_metrics(y, predict_proba(head, x, CPU))[key], 4)


class ServerStep:
    """The server's update from the hospitals' weighted mean: FedAvg takes it; FedAvgM adds momentum
    to the pseudo-gradient (mean - global); FedAdam as Flower's (beta1 0.9, beta2 0.99, tau). The real
    round loop runs Flower's own strategies (server/strategies.py); this copy of their update rules keeps
    the proxy free of Flower messages."""

    def __init__(self, kind: str, lr: float, momentum: float, tau: float) -> None:
        self.kind, self.lr, self.momentum, self.tau = kind, lr, momentum, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def __call__(self, current: dict[str, torch.Tensor], mean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, w in current.items():
            delta = mean[k] - w
            if self.kind == "avg":
                out[k] = w + self.lr * delta
            elif self.kind == "avgm":
                self.m[k] = self.momentum * self.m.get(k, torch.zeros_like(w)) + delta
                out[k] = w + self.lr * self.m[k]
            else:  # adam
                self.m[k] = 0.9 * self.m.get(k, torch.zeros_like(w)) + 0.1 * delta
                self.v[k] = 0.99 * self.v.get(k, torch.zeros_like(w)) + 0.01 * delta * delta
                out[k] = w + self.lr * self.m[k] / (self.v[k].sqrt() + self.tau)
        return out


def run(f: dict[str, np.ndarray], config: RunConfig, federated: bool, server: ServerStep | None = None) -> dict:
    classes = int(f["train_y"].max()) + 1
    torch.manual_seed(config.seed)  # the server's initial model
    head = get_task("image-cnn").build_model((f["train_x"].shape[1] // 81, 28, 28), classes, config).head
    curve = []
    if federated:
        parts = hospital_splits(config, f["train_y"])
        for r in range(config.num_server_rounds):
            states, weights = [], []
            for h, idx in enumerate(parts):
                local = copy.deepcopy(head)
                out = fit_classifier(local, Samples(f["train_x"][idx], f["train_y"][idx]), classes, config, None, CPU,
                                     1000 * config.seed + 10 * r + h)
                states.append(local.state_dict())
                weights.append(out.num_examples)
            w = np.asarray(weights, dtype=np.float64) / sum(weights)
            mean = {k: sum(float(wi) * s[k] for wi, s in zip(w, states)) for k in states[0]}
            head.load_state_dict(server(head.state_dict(), mean) if server is not None else mean)
            curve.append(accuracy(head, f["val_x"], f["val_y"]))
    else:
        fit_classifier(head, Samples(f["train_x"], f["train_y"]), classes,
                       config.replace(local_epochs=config.num_server_rounds), None, CPU, config.seed)
    return {"val_accuracy": accuracy(head, f["val_x"], f["val_y"]),
            "test_accuracy": accuracy(head, f["test_x"], f["test_y"]),
            "val_balanced_accuracy": accuracy(head, f["val_x"], f["val_y"], "balanced-accuracy"), "val_by_round": curve}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="bloodmnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.0])
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--no-class-weighting", action="store_true")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--server", choices=("avg", "avgm", "adam"), default="avg")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.9)
    parser.add_argument("--tau", type=float, default=1e-3)
    parser.add_argument("--fed-only", action="store_true")
    parser.add_argument("--central-only", action="store_true")
    parser.add_argument("--capped-weights", action="store_true",
                        help="class weights min(1, (1/K)/share) (common/class_prior.py training_weights) instead of inverse frequency")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.capped_weights:
        import common.training as training
        from common.class_prior import training_weights
        training.class_weights = lambda y, k: torch.tensor(
            training_weights(np.bincount(y, minlength=k).astype(np.float64)), dtype=torch.float32)
    f = features(args.data)
    for seed in args.seeds:
        for lr in args.lr:
            config = resolve(RunConfig(task="image-cnn", dp=False, partition="dirichlet:0.5", seed=seed, lr=lr,
                                       num_server_rounds=args.rounds, batch_size=args.batch_size,
                                       class_weighting="false" if args.no_class_weighting else "true",
                                       local_epochs=args.local_epochs))
            for federated in ((True,) if args.fed_only else (False,) if args.central_only else (True, False)):
                server = ServerStep(args.server, args.server_lr, args.server_momentum, args.tau)
                print(json.dumps({"data": args.data, "method": "fedavg" if federated else "centralised", "seed": seed,
                                  "rounds": config.num_server_rounds, "lr": config.lr, "batch": config.batch_size,
                                  "class_weighting": config.class_weighting == "true" and ("capped" if args.capped_weights else "inverse"), "local_epochs": config.local_epochs,
                                  "server": f"{args.server} lr {args.server_lr:g}"
                                  + (f" m {args.server_momentum:g}" if args.server == "avgm" else "")
                                  + (f" tau {args.tau:g}" if args.server == "adam" else ""),
                                  **run(f, config, federated, server)}), flush=True)


if __name__ == "__main__":
    main()
