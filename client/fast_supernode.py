"""Flower's `flower-supernode`, with idle waits capped at 0.2 s and no stranded replies.

Latency: the SuperNode sleeps 3 s whenever a pull from the SuperLink finds no
message and 0.5 s while waiting for a ClientApp's reply; a round pays both twice.
This runner gives `flwr.supernode.start_client_internal` a `time` module whose
`sleep` is capped; the cost is one pull every 0.2 s per idle hospital.

Stranded replies: Flower's loop pushes replies only right after it has pulled a
message, and then only those ready at that moment. A reply that misses that moment
waits for the next message, which the server does not send until it has the reply.
Seen after SuperLink restarts (about 3 in 20): most likely a message of the killed
run whose `confirm_message_received` raised `RunNotRunningException` (a
BaseException, so it skips the clean-up) stays in the node state and its ClientApp
still answers. That late reply is pushed in place of the new run's first reply,
and the node stays one reply behind for the rest of the run (deploy/README.md).
`flush_ready_replies` makes an idle pull push whatever replies are ready.

Both are set on the module, then Flower's own entry point runs with the same
arguments. Used by `fedward supernode` (not with `--cold`). Tied to flwr 1.41 (pinned).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from logging import INFO
from types import SimpleNamespace
from typing import Any

from flwr.common import Message
from flwr.common.logger import log
from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode

from common.flower_latency import tighten_object_pull_backoff

IDLE_WAIT_S = 0.2


def capped_time(limit: float = IDLE_WAIT_S) -> SimpleNamespace:
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("__")}
    return SimpleNamespace(**{**names, "sleep": lambda seconds: time.sleep(min(seconds, limit))})


class _WithTakenReplies:
    """The node state, except that the next request for replies gets `taken` first."""

    def __init__(self, state: Any, taken: Sequence[Message]) -> None:
        self._state = state
        self._taken = list(taken)

    def get_messages_legacy(self, **filters: Any) -> Sequence[Message]:
        if filters.get("is_reply") and self._taken:
            taken, self._taken = self._taken, []
            return taken
        return self._state.get_messages_legacy(**filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def flush_ready_replies(pull: Callable[..., int | None], push: Callable[..., None]) -> tuple[
        Callable[..., int | None], Callable[..., None]]:
    """Flower's pull and push steps, changed so that a pull that finds no message but
    replies ready in the node state hands them to the push step that follows.

    Reading replies from the node state marks them as taken, so the push step is given
    them directly rather than asked to look again."""
    taken: list[Message] = []

    def pull_or_ready(*, state: Any, **kwargs: Any) -> int | None:
        run_id = pull(state=state, **kwargs)
        if run_id is None and (ready := state.get_messages_legacy(is_reply=True)):
            taken[:] = ready
            log(INFO, "Sending %d reply(ies) left waiting after an earlier push", len(ready))
            return ready[0].metadata.run_id
        return run_id

    def push_taken_first(*, state: Any, **kwargs: Any) -> None:
        if taken:
            state = _WithTakenReplies(state, taken)
            taken.clear()
        push(state=state, **kwargs)

    return pull_or_ready, push_taken_first


def main() -> None:
    start_client_internal.time = capped_time()  # type: ignore[assignment]
    (start_client_internal._pull_and_store_message,  # type: ignore[attr-defined]
     start_client_internal._push_messages) = flush_ready_replies(  # type: ignore[attr-defined]
        start_client_internal._pull_and_store_message,  # type: ignore[attr-defined]
        start_client_internal._push_messages)  # type: ignore[attr-defined]
    tighten_object_pull_backoff()
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
