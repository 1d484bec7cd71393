"""Which data this hospital trains on, and its own train / held-out split.

Deployment: the hospital names its data in node config (`data-path`, optionally
`hospital`) and fixes its own held-out split there: `test-fraction` (default
0.25, at least 0.1) and `split-seed` (default 0). The server's `test-fraction`,
`seed` and `max-samples` do not reach a real hospital's split, so the server can
neither shrink the held-out split to a few patients nor walk it through them.
Simulation: the engine sets `partition-id` and `num-partitions`, the run's data
set is split with Flower Datasets partitioners, and the run's settings apply
(the researcher owns the data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data import Samples, local_split
from common.errors import ConfigError
from common.fingerprint import fingerprint_path, fingerprint_text
from common.tasks import load_data


SIMULATED_NODE_CONFIG = "FEDWARD_SIM_NODE_CONFIG"
DEFAULT_TEST_FRACTION = 0.25
MIN_TEST_FRACTION = 0.1


def node_settings(node_config: Mapping[str, object]) -> dict[str, object]:
    """The node config; a simulated hospital adds what `fedward simulate --node-config` set.

    Flower's simulation engine gives virtual hospitals only partition-id and
    num-partitions, so fedward passes the rest (what a real hospital would put in
    --node-config, e.g. its privacy ledger) in an environment variable.
    """
    settings = dict(node_config)
    if "partition-id" in settings and os.environ.get(SIMULATED_NODE_CONFIG):
        extra = json.loads(os.environ[SIMULATED_NODE_CONFIG])
        settings.update({k: v for k, v in extra.items() if k not in settings})
    return settings


@dataclass(frozen=True)
class HospitalData:
    name: str
    train: Samples
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]
    fingerprint: str  # of the data this hospital trains on: its privacy-ledger line
    skipped_files: int = 0  # unreadable items left out under bad-files=skip


def hospital_data(config: RunConfig, node_config: Mapping[str, object]) -> HospitalData:
    if "bad-files" in node_config:  # the hospital's own policy wins over the run's
        config = config.replace(bad_files=str(node_config["bad-files"]))
    test_fraction, split_seed = config.test_fraction, config.seed
    if "data-path" in node_config:
        path = str(node_config["data-path"])
        data = load_data(config.replace(max_samples=0), path)  # all of the hospital's data, always
        samples = data.train
        name = hospital_name(node_config)
        fingerprint = fingerprint_path(path)
        test_fraction, split_seed = held_out_policy(node_config)
    elif "partition-id" in node_config:
        from common.partition import partition_index  # simulation only: `datasets` is heavy

        data = load_data(config)
        index = int(node_config["partition-id"])  # type: ignore[arg-type]
        count = int(node_config["num-partitions"])  # type: ignore[arg-type]
        part = partition_index(data.train, config.partition_spec, count, index, config.seed)
        samples = data.train.take(part)
        name = _partition_name(samples, index)
        fingerprint = fingerprint_text(
            fingerprint_path(config.data_path), config.partition, f"{index}/{count}",
            config.seed, config.max_samples, config.test_fraction,
        )
    else:
        raise ConfigError(
            "this node has no data: start the SuperNode with --node-config "
            "'data-path=\"/path/to/data\"'"
        )
    train, test = local_split(samples, test_fraction, split_seed)
    for reason in data.skipped:  # named here, at the hospital; only the count is sent
        print(f"hospital {name}: skipped {reason}", flush=True)
    return HospitalData(name, train, test, data.num_classes, data.input_shape, fingerprint, len(data.skipped))


def hospital_name(node_config: Mapping[str, object]) -> str:
    """The hospital's name as the server sees it (known before any data is read)."""
    if "hospital" in node_config:
        return str(node_config["hospital"])
    if "data-path" in node_config:
        return Path(str(node_config["data-path"])).stem
    if "partition-id" in node_config:
        return f"hospital-{node_config['partition-id']}"
    return "unnamed-hospital"


def held_out_policy(node_config: Mapping[str, object]) -> tuple[float, int]:
    """The hospital's own held-out fraction and split seed (node config, never the run)."""
    try:
        fraction = float(node_config.get("test-fraction", DEFAULT_TEST_FRACTION))  # type: ignore[arg-type]
        seed = int(node_config.get("split-seed", 0))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError("node config test-fraction must be a number and split-seed an integer") from None
    if not MIN_TEST_FRACTION <= fraction < 1:
        raise ConfigError(
            f"node config test-fraction={fraction:g} must be in [{MIN_TEST_FRACTION}, 1): a smaller held-out "
            "split would let evaluations single out a few patients"
        )
    return fraction, seed


def _partition_name(samples: Samples, index: int) -> str:
    """A natural site's own name where the partition is one site, else hospital-N."""
    if samples.groups is not None:
        sites = np.unique(samples.groups)
        if len(sites) == 1:
            return str(sites[0])
    return f"hospital-{index}"
