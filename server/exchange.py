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


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float, poll: float = POLL_S) -> list[Message]:
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        received = list(grid.pull_messages(waiting))
        replies.extend(received)
        waiting -= {msg.metadata.reply_to_message_id for msg in received}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies
