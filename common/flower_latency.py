"""Tighten Flower 1.41's retry backoff for message objects, in this process.

When an object of a message (e.g. the model's arrays) is not yet in the store it
is pulled from, Flower waits 1 s, then 2 s, 4 s... (capped at 10 s) before
retrying. Every hop of a round pulls objects this way (ServerApp <- SuperLink,
SuperNode <- SuperLink, ClientApp <- SuperNode), so a deployment round on
loopback spent seconds waiting for data that arrived milliseconds later. This
sets the defaults to 0.05 s doubling up to 0.5 s. Tied to flwr 1.41 (pinned).
"""

from __future__ import annotations

INITIAL_BACKOFF_S = 0.05
BACKOFF_CAP_S = 0.5


def tighten_object_pull_backoff(initial: float = INITIAL_BACKOFF_S, cap: float = BACKOFF_CAP_S) -> None:
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        if defaults is None or "initial_backoff" not in defaults:
            return  # another Flower version: leave it as it is
        defaults["initial_backoff"] = initial
        defaults["backoff_cap"] = cap
