"""Flower's Grid interface over the real ClientApp, called in this process.

The server's round loop (server.federation) runs unchanged against it; each
"node" is a Context with its own node config and state, as a SuperNode keeps
them. `faults` lets a test make a hospital misbehave on the wire: a function
from (instruction, honest reply) to the reply that is actually sent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.serverapp import Grid

Fault = Callable[[Message, Message], Message]


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, node_configs: list[dict], faults: dict[int, Fault] | None = None) -> None:
        self.client_app = client_app
        # what Flower's ServerApp runtime sets in its process before messages are built
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, node_config=cfg, state=RecordDict(), run_config={})
            for i, cfg in enumerate(node_configs)
        }
        self.faults = {100 + i: f for i, f in (faults or {}).items()}
        self.replies: dict[str, Message] = {}
        self._run: Run | None = None

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:  # type: ignore[override]
        assert self._run is not None
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # type: ignore[no-untyped-def,override]
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            received = copy.deepcopy(msg)  # as if serialised: a hospital cannot touch the server's objects
            try:
                reply = self.client_app(received, self.contexts[node])
            except Exception as err:  # what Flower's runtime turns into an error reply
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if node in self.faults:
                reply = self.faults[node](msg, reply)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


class WireTap(InProcessGrid):
    """Keeps every reply the server pulls: all that server-side code ever holds."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.received: list[Message] = []

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        replies = list(super().pull_messages(message_ids))
        self.received.extend(replies)
        return replies
