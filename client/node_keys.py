"""Every node-config key a fedward hospital reads, checked: an unknown key or a bad value is refused, naming it.

A misspelt key used to be ignored: `require-secure-aggregaton=true` left the hospital
training outside SecAgg+ while its operator believed otherwise, `max-evaluation=0`
left evaluations on; `bad-files="skp"` or `test-fraction=2` failed only when a round
read them. `fedward supernode` and `fedward simulate --node-config` check keys and
values before anything starts; the ClientApp checks them again on every message (a
SuperNode started by hand), before it reads data or trains.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from common.errors import ConfigError

NODE_KEYS: dict[str, str] = {
    "data-path": "the hospital's data (file or folder)",
    "hospital": "the hospital's name in logs and tables",
    "test-fraction": "share of the data held out for evaluation",
    "split-seed": "seed of the held-out split",
    "bad-files": "raise or skip unreadable files and rows",
    "privacy-ledger": "the SQLite privacy ledger",
    "dataset-name": "the ledger's budget line",
    "epsilon-budget": "cumulative epsilon the line may spend",
    "delta": "the hospital's delta",
    "run-epsilon-cap": "most epsilon one run may spend",
    "run-cap-window-hours": "the cap's time window",
    "allow-no-dp": "accept runs without DP",
    "require-secure-aggregation": "train only inside SecAgg+",
    "reproducible-noise": "simulation only: DP noise seeded from the run",
    "max-evaluations": "evaluations answered per run and per day",
    "min-eval-size": "smallest held-out split scored",
    "incident-log": "file of the hospital's own failure details",
    "benefit-report": "train the local-only and personalised models",
    "share-benefit": "send the benefit scores to the server",
    "benefit-dir": "where the benefit models and table are kept",
    "personalise-epochs": "retired; refused with its own message (client/benefit.py)",
    "partition-id": "simulation: Flower's virtual hospital index",
    "num-partitions": "simulation: Flower's number of virtual hospitals",
}


def check_node_keys(settings: Mapping[str, object]) -> None:
    """Refuse a node config holding a key fedward does not read."""
    unknown = sorted(set(settings) - set(NODE_KEYS))
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, NODE_KEYS, n=1, cutoff=0.7)
        lines.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"node config key{'s' if len(unknown) > 1 else ''} {', '.join(lines)} not read by fedward; "
        f"fix the spelling or remove it (known keys: {', '.join(k for k in NODE_KEYS if k != 'personalise-epochs')})"
    )


def check_node_config(settings: Mapping[str, object]) -> None:
    """Known keys, and every value a hospital reads, checked now rather than when a round reads it."""
    from client.benefit import benefit_settings
    from client.evaluation_limits import evaluation_limits
    from client.hospital import held_out_policy

    check_node_keys(settings)
    if "bad-files" in settings and settings["bad-files"] not in ("stop", "skip"):
        raise ConfigError(f"node config bad-files={settings['bad-files']!r} must be \"stop\" or \"skip\" "
                          "(text in double quotes)")
    held_out_policy(settings)
    evaluation_limits(settings)
    benefit_settings(settings)
