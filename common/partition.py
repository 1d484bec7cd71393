"""Split one data set into virtual hospitals with Flower Datasets partitioners."""

from __future__ import annotations

import math

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    GroupedNaturalIdPartitioner,
    IidPartitioner,
    Partitioner,
)

from common.config import Partition
from common.data import Samples
from common.errors import ConfigError, DataError


def partition_index(
    samples: Samples, partition: Partition, num_partitions: int, partition_id: int, seed: int
) -> np.ndarray:
    """Indices of the samples that virtual hospital `partition_id` holds."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id={partition_id} is not in 0..{num_partitions - 1}")
    return partition_indices(samples, partition, num_partitions, seed)[partition_id]


def partition_indices(
    samples: Samples, partition: Partition, num_partitions: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Every virtual hospital's sample indices, computed once per data set and split.

    A simulation worker serves many virtual hospitals from one process, and each of
    their messages asks for its partition: the split is kept for the same `samples`
    object (load_data caches it), so a message costs a lookup, not a partitioner.
    """
    key = (id(samples), str(partition), num_partitions, seed)
    hit = _SPLITS.get(key)
    if hit is not None and hit[0] is samples:
        return hit[1]
    parts = _split(samples, partition, num_partitions, seed)
    if len(_SPLITS) >= 4:
        _SPLITS.pop(next(iter(_SPLITS)))
    _SPLITS[key] = (samples, parts)
    return parts


_SPLITS: dict[tuple, tuple[Samples, tuple[np.ndarray, ...]]] = {}


def _split(samples: Samples, partition: Partition, num_partitions: int, seed: int) -> tuple[np.ndarray, ...]:
    if samples.patients is not None and partition.scheme != "natural":
        return _split_patients(samples, partition, num_partitions, seed)
    if num_partitions > len(samples):
        raise ConfigError(
            f"{num_partitions} hospitals but only {len(samples)} samples: use fewer "
            "hospitals (--hospitals) or more data"
        )
    columns: dict[str, list] = {"index": list(range(len(samples))), "label": samples.y.tolist()}
    if samples.groups is not None:
        columns["group"] = samples.groups.tolist()
    dataset = Dataset.from_dict(columns)
    partitioner = _partitioner(samples, partition, num_partitions, seed)
    if partition.scheme == "iid":
        dataset = dataset.shuffle(seed=seed)  # IidPartitioner shards in order
    partitioner.dataset = dataset
    if partitioner.num_partitions != num_partitions:
        raise ConfigError(
            f"partition=natural groups the {_num_groups(samples)} sites of this data set "
            f"into {partitioner.num_partitions} hospitals, not {num_partitions}; pick a "
            "hospital count that divides the sites evenly"
        )
    try:
        parts = [partitioner.load_partition(i)["index"] for i in range(num_partitions)]
    except ValueError as err:  # e.g. Dirichlet cannot reach its minimum partition size
        raise ConfigError(f"partition={partition}: {err}") from err
    return tuple(np.sort(np.asarray(part, dtype=np.int64)) for part in parts)


def _split_patients(samples: Samples, partition: Partition, num_partitions: int,
                    seed: int) -> tuple[np.ndarray, ...]:
    """iid / Dirichlet over patients, each hospital taking its patients' every sample: split record
    by record, one patient's samples would sit at several hospitals, and each hospital's
    patient-level epsilon would protect only its share of them (per patient, the hospitals'
    epsilons would add up). Dirichlet reads each patient's most common label."""
    ids, owner = np.unique(samples.patients, return_inverse=True)
    if num_partitions > len(ids):
        raise ConfigError(
            f"{num_partitions} hospitals but only {len(ids)} patients: a patient's samples stay at one "
            "hospital; use fewer hospitals (--hospitals)"
        )
    counts = np.zeros((len(ids), int(samples.y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (owner, samples.y), 1)
    per_patient = Samples(np.zeros((len(ids), 1), dtype=np.float32), counts.argmax(axis=1).astype(np.int64))
    order = np.argsort(owner, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(owner, minlength=len(ids)))[:-1])
    return tuple(np.sort(np.concatenate([members[p] for p in part])) if len(part) else np.zeros(0, dtype=np.int64)
                 for part in _split(per_patient, partition, num_partitions, seed))


def _num_groups(samples: Samples) -> int:
    return 0 if samples.groups is None else len(np.unique(samples.groups))


def _partitioner(
    samples: Samples, partition: Partition, num_partitions: int, seed: int
) -> Partitioner:
    if partition.scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if partition.scheme == "dirichlet":
        min_size = max(2, min(10, len(samples) // (4 * num_partitions)))
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=partition.alpha,
            min_partition_size=min_size, self_balancing=False, seed=seed,
        )
    if samples.groups is None:
        raise DataError(
            "partition=natural needs a data set with natural sites (hospital or patient "
            "column); this one has none: use iid or dirichlet:ALPHA"
        )
    groups = _num_groups(samples)
    if num_partitions > groups:
        raise ConfigError(
            f"partition=natural: this data set has {groups} sites, fewer than "
            f"{num_partitions} hospitals; use at most {groups} hospitals"
        )
    return GroupedNaturalIdPartitioner(
        partition_by="group", group_size=math.ceil(groups / num_partitions),
        sort_unique_ids=True,
    )
