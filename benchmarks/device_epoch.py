"""One hospital's local epoch, plain and with DP, on every device this machine has.

    .venv/bin/python benchmarks/device_epoch.py [--tasks tabular image-cnn ...] [--samples N]

For each task family it trains the task's own model with the task's own trainer
(`Task.train`, what a hospital's ClientApp runs) for one epoch, with and without
DP-SGD, first on the CPU and then on CUDA when present. One JSON line per
(task, device, mode): seconds per epoch (median of --repeats after one warm-up),
the device the weights ended up on, and ratios measured in the same run
(dp/plain on each device, cpu/cuda for each mode). Needs FEDWARD_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import warnings
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RunConfig  # noqa: E402
from common.privacy import DPState, calibrate_noise  # noqa: E402
from common.tasks import get_task, load_data, resolve  # noqa: E402
from common.training import planned_steps  # noqa: E402
from report import machine, write_section  # noqa: E402

DATA = Path(os.environ.get("FEDWARD_DATA_DIR", ROOT.parent / "shared" / "data"))
SOURCES = {
    "tabular": "heart_disease_uci",
    "image-cnn": "medmnist/pneumoniamnist.npz",
    "image-gan": "medmnist/pneumoniamnist.npz",
    "sequence-rnn": "mitbih_arrhythmia",
}


def one_epoch(task_name: str, config: RunConfig, dp: bool, device: torch.device, repeats: int) -> dict:
    task = get_task(config.task)
    data = load_data(config)
    times, final_device = [], "?"
    for attempt in range(repeats + 1):  # the first is a warm-up (CUDA context, kernels, caches)
        model = task.build_model(data.input_shape, data.num_classes, config)
        state = None
        if dp:
            n = len(data.train.y)
            steps = planned_steps(n, config) * config.num_server_rounds
            noise = calibrate_noise(config.epsilon, config.delta, config.batch_size / n, steps)
            state = DPState(noise_multiplier=noise, max_grad_norm=config.max_grad_norm, delta=config.delta)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outcome = task.train(model, data.train, data.num_classes, config, state, device, attempt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:
            times.append(time.perf_counter() - start)
        final_device = str(next(model.parameters()).device)
    return {
        "task": task_name, "device": str(device), "mode": "dp" if dp else "plain",
        "samples": len(data.train.y), "batch_size": config.batch_size, "steps": outcome.steps,
        "seconds_per_epoch": statistics.median(times), "weights_on": final_device,
        "loss": outcome.loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SOURCES))
    parser.add_argument("--samples", type=int, default=2000, help="max samples per task (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--render", type=Path, metavar="JSONL",
                        help="only write docs/benchmarks.md from lines measured elsewhere (--out of a GPU run)")
    args = parser.parse_args()
    if args.render:
        header, *rows = [json.loads(line) for line in args.render.read_text().splitlines()]
        document(rows, {**header["machine"], "torch": header["torch"]}, header["command"])
        return
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    header = {"machine": machine(), "torch": torch.__version__, "command": " ".join(sys.argv)}
    lines = [header]
    print(json.dumps(header), flush=True)
    for name in args.tasks:
        config = resolve(RunConfig(task=name, data_path=str(DATA / SOURCES[name]), max_samples=args.samples))
        rows = {}
        for device in devices:
            for dp in (False, True):
                row = one_epoch(name, config, dp, device, args.repeats)
                rows[(device.type, row["mode"])] = row
        for (dev, mode), row in rows.items():
            if mode == "dp":
                row["dp_over_plain"] = row["seconds_per_epoch"] / rows[(dev, "plain")]["seconds_per_epoch"]
            if dev == "cuda":
                row["cpu_over_cuda"] = rows[("cpu", mode)]["seconds_per_epoch"] / row["seconds_per_epoch"]
            lines.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with args.out.open("a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
    document(lines[1:], header["machine"], header["command"])


def document(rows: list[dict], facts: dict, command: str) -> None:
    write_section(
        "Local epoch: CPU and CUDA, plain and DP", rows,
        ["task", "device", "mode", "samples", "steps", "seconds_per_epoch", "dp_over_plain", "cpu_over_cuda", "weights_on"],
        notes="One hospital's epoch with the task's own trainer (batch 32); median of 3 after a warm-up. "
              "At batch 32 these small models leave an H100 mostly idle. Training really runs there "
              "(`weights_on`).",
        facts=facts, command=command,
    )


if __name__ == "__main__":
    main()
