"""Flower's `flower-supernode`, with its idle waits capped at 0.2 s.

The SuperNode sleeps 3 s whenever a pull from the SuperLink finds no message and
0.5 s while waiting for a ClientApp's reply; a round pays both twice. This runner
gives `flwr.supernode.start_client_internal` a `time` module whose `sleep` is
capped, then runs Flower's own entry point with the same arguments. Used by
`fedward supernode` (not with `--cold`); the cost is one pull every 0.2 s per idle
hospital. Tied to flwr 1.41 (pinned).
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode

from common.flower_latency import tighten_object_pull_backoff

IDLE_WAIT_S = 0.2


def capped_time(limit: float = IDLE_WAIT_S) -> SimpleNamespace:
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("__")}
    return SimpleNamespace(**{**names, "sleep": lambda seconds: time.sleep(min(seconds, limit))})


def main() -> None:
    start_client_internal.time = capped_time()  # type: ignore[assignment]
    tighten_object_pull_backoff()
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
