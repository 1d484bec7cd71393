"""Aggregation throughput on one core: update bytes averaged per second.

    .venv/bin/python benchmarks/aggregation.py [--hospitals 10] [--params 1000000 25000000]

For each model size, 10 hospitals' float32 replies are built as the server gets
them (Flower Messages with one ArrayRecord and one MetricRecord), then timed
side by side, median of --repeats:

- `screen`: our pre-aggregation checks (keys, shapes, NaN/Inf, norm outliers);
- `fedavg`: Flower's `FedAvg.aggregate_train`, as the server loop calls it;
- `screen+fedavg`: what one round costs the server;
- `numpy`: a weighted sum of the same arrays already in memory (the floor).

Throughput = hospitals x parameters x 4 bytes / seconds. Target (issue 5): >= 1 GB/s.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from report import write_section  # noqa: E402
from server.screening import screen  # noqa: E402


def layers(total: int) -> dict[str, tuple[int, ...]]:
    """A model of about `total` parameters in layers of 1M (and one remainder)."""
    shapes, left, i = {}, total, 0
    while left > 0:
        n = min(left, 1_000_000)
        shapes[f"layer{i}.weight"] = (n // 1000, 1000) if n % 1000 == 0 else (n,)
        left -= n
        i += 1
    return shapes


def replies(shapes: dict[str, tuple[int, ...]], hospitals: int, rng: np.random.Generator) -> tuple[ArrayRecord, list[Message]]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    reference = ArrayRecord({k: Array(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()})
    out = []
    for h in range(hospitals):
        arrays = ArrayRecord({k: Array(reference[k].numpy() + 0.01 * rng.standard_normal(s, dtype=np.float32))
                              for k, s in shapes.items()})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100 + h}),
                              "hospital": ConfigRecord({"name": f"h{h}"})})
        instruction = Message(content=RecordDict(), message_type="train", dst_node_id=h + 1)
        out.append(Message(content=content, reply_to=instruction))
    return reference, out


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 25_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = np.random.default_rng(0)
    strategy = FedAvg()
    rows = []
    for total in args.params:
        reference, msgs = replies(layers(total), args.hospitals, rng)
        in_memory = [[a.numpy() for a in next(iter(m.content.array_records.values())).values()] for m in msgs]
        weights = np.array([100 + h for h in range(args.hospitals)], dtype=np.float64)
        weights /= weights.sum()

        def numpy_sum() -> None:
            out = [w.astype(np.float32) * np.float32(weights[0]) for w in in_memory[0]]
            for factor, arrays in zip(weights[1:], in_memory[1:], strict=True):
                for acc, a in zip(out, arrays, strict=True):
                    acc += np.float32(factor) * a

        cases = {
            "screen": lambda: screen(msgs, reference, train=True, outlier_factor=10.0),
            "fedavg": lambda: strategy.aggregate_train(1, msgs),
            "screen+fedavg": lambda: strategy.aggregate_train(1, screen(msgs, reference, train=True, outlier_factor=10.0)[0]),
            "numpy": numpy_sum,
        }
        nbytes = args.hospitals * total * 4
        for name, fn in cases.items():
            seconds = timed(fn, args.repeats)
            row = {"params": total, "hospitals": args.hospitals, "path": name, "seconds": seconds,
                   "gb_per_s": nbytes / seconds / 1e9, "meets_1gb_s": nbytes / seconds >= 1e9}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.no_doc:
        write_section("Aggregation throughput (one core)", rows,
                      ["params", "hospitals", "path", "seconds", "gb_per_s", "meets_1gb_s"],
                      notes="Bytes = hospitals x params x 4 (float32 updates). `numpy` is the floor: "
                            "the same weighted sum over arrays already in memory.")


if __name__ == "__main__":
    main()
