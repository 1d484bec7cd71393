"""Send messages and collect their replies, polling every 0.1 s.

Flower 1.41's `Grid.send_and_receive` sleeps 3 s between pulls, which a
deployment round pays twice (train, evaluate). This is the same loop over the
public `push_messages` / `pull_messages`, with a short poll and the same timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.1
# message id -> the node it was sent to: an error reply made by the SuperLink for a lost
# node ("Node Unavailable") does not carry that node's id, its reply_to id does lead to it.
DESTINATION: dict[str, int] = {}


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float, poll: float = POLL_S, until_first: bool = False,
) -> list[Message]:
    """Replies until all are in or `timeout`; with `until_first`, stop at the first one
    without an error (one answer from any hospital is enough)."""
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    DESTINATION.update({i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=False)})
    waiting = set(ids)
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        received = list(grid.pull_messages(waiting))
        replies.extend(received)
        waiting -= {msg.metadata.reply_to_message_id for msg in received}
        answered = until_first and any(not m.has_error() for m in received)
        if not waiting or answered or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies
