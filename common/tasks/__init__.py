"""The task registry: a run config's `task` name -> its folder's Task.

Task modules import torch and their readers, so they load on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os

from common.config import TASK_NAMES, RunConfig
from common.data import TaskData, bad_items_policy, subsample
from common.errors import ConfigError
from common.tasks.base import Task

_MODULES = {
    "tabular": "common.tasks.tabular",
    "image-cnn": "common.tasks.image_cnn",
    "sequence-rnn": "common.tasks.sequence_rnn",
    "image-gan": "common.tasks.image_gan",
}
assert set(_MODULES) == set(TASK_NAMES)


def get_task(name: str) -> Task:
    if name not in _MODULES:
        raise ConfigError(f"task={name!r} is not known; choose one of {', '.join(TASK_NAMES)}")
    return importlib.import_module(_MODULES[name]).TASK


def resolve(config: RunConfig) -> RunConfig:
    """The config with the task's defaults filled in where a setting is 0 ("the task's default"):
    lr, batch-size, max-grad-norm, num-server-rounds, an empty model, class-weighting=auto,
    lr-schedule=auto, min-local-steps=-1, server-momentum=-1 and balanced-tau=0 (common/tasks/base.py). Idempotent; an
    explicit value is kept. Everything that trains, plans DP steps, accounts or reports reads
    the resolved config."""
    config.validate()  # before replace() below derives anything from it (a setting the run cannot use)
    task = get_task(config.task)
    defaults = {
        "lr": task.default_dp_lr if config.dp else task.default_lr,
        "batch_size": task.default_dp_batch_size if config.dp else task.default_batch_size,
        "max_grad_norm": task.default_max_grad_norm,
        "num_server_rounds": task.default_dp_rounds if config.dp and task.default_dp_rounds else task.default_rounds,
    }
    unset: dict[str, object] = {name: value for name, value in defaults.items() if getattr(config, name) == 0}
    if not config.model and task.default_model:
        unset["model"] = task.default_model
    if config.class_weighting == "auto":
        unset["class_weighting"] = "true" if task.class_weighting else "false"
    if config.lr_schedule == "auto":
        unset["lr_schedule"] = task.dp_lr_schedule if config.dp else task.lr_schedule
    if config.min_local_steps == -1:
        unset["min_local_steps"] = 0 if config.dp else task.min_local_steps
    if config.balanced_tau and not task.classifier:
        raise ConfigError(f"balanced-tau={config.balanced_tau} is the balanced decision rule's tau; task {task.name} "
                          f"makes no class decisions: leave it out")
    if config.balanced_tau == 0 and config.balanced_rule and task.classifier:  # else the rule never applies
        unset["balanced_tau"] = task.balanced_tau
    if config.server_momentum == -1:  # FedAvgM only on a plain FedAvg mean (central DP noises that one)
        plain = config.strategy != "fedavg" or config.central_dp_noise > 0
        unset["server_momentum"] = 0.0 if plain else task.dp_server_momentum if config.dp else task.server_momentum
    return config.replace(**unset) if unset else config


def load_data(config: RunConfig, path: str | None = None) -> TaskData:
    """The task's data at `path` (default: the run's data path), subsampled as set.

    Cached per process: a simulation's virtual hospitals share one worker process
    and would otherwise re-read the same files every round.
    """
    path = path or config.data_path
    stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    return _load_cached(config.task, path, stamp, config.image_size, config.max_samples, config.seed,
                        config.bad_files)


@functools.lru_cache(maxsize=4)
def _load_cached(
    task: str, path: str, _stamp: int, image_size: int, max_samples: int, seed: int, bad_files: str
) -> TaskData:
    config = RunConfig(
        task=task, data_path=path, image_size=image_size, max_samples=max_samples, seed=seed,
        bad_files=bad_files,
    )
    with bad_items_policy(skip=bad_files == "skip") as skipped:
        data = get_task(task).load(path, config)
    data = dataclasses.replace(data, skipped=tuple(skipped))
    if max_samples:
        data = dataclasses.replace(
            data,
            train=subsample(data.train, max_samples, seed),
            test=None if data.test is None else subsample(data.test, max_samples, seed),
            validation=None if data.validation is None else subsample(data.validation, max_samples, seed),
        )
    return data
