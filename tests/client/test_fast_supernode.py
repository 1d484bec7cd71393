"""The SuperNode runner's reply flush, on Flower's own node state and push step.

After a SuperLink restart a reply can be left in the node state with no push step
waiting for it (client/fast_supernode.py says how). Flower's loop only pushes after
it pulls a message, and the server sends none until it has the reply: the hospital
then answers every later round one message late. The flush sends such a reply at
the next idle pull."""

from __future__ import annotations

from typing import Any

from flwr.common import ConfigRecord, Message, RecordDict
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode import start_client_internal as flower_loop
from flwr.supernode.nodestate import NodeStateFactory

from client.fast_supernode import flush_ready_replies


class Link:
    """The SuperLink side of the loop: nothing to pull, every pushed reply recorded."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def receive(self) -> None:
        return None

    def send(self, message: Message, object_tree: Any, runtime: float) -> tuple[set[str], str]:
        self.sent.append(message)
        return set(), "session"

    def push_object(self, *args: Any) -> None:
        raise AssertionError("send asked for no objects")


def node_with_a_stranded_reply(run_id: int) -> tuple[Any, Any, Message]:
    """A node state holding a message of `run_id` and the ClientApp's reply to it,
    stored the way Flower's loop stores them, with no push step waiting."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1  # the server's side
    stores = ObjectStoreFactory()
    state, store = NodeStateFactory(stores).state(), stores.store()
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 2})}),
                          dst_node_id=7, message_type="train", group_id="2")
    flower_loop._insert_message(instruction, state, store)
    reply = Message(RecordDict({"metrics": ConfigRecord({"loss": 0.5})}), reply_to=instruction)
    flower_loop._insert_message(reply, state, store)
    return state, store, reply


def one_turn(pull: Any, push: Any, state: Any, store: Any, link: Link) -> None:
    """One turn of Flower's SuperNode loop (flwr/supernode/start_client_internal.py)."""
    run_id = pull(state=state, object_store=store, node_config={}, receive=link.receive,
                  get_run=None, get_fab=None, pull_object=None, confirm_message_received=None,
                  trusted_entities=None)
    if run_id is None:
        return
    push(state=state, object_store=store, send=link.send, push_object=link.push_object)


def test_an_idle_pull_sends_a_stranded_reply(caplog):
    state, store, reply = node_with_a_stranded_reply(run_id=11)
    link = Link()
    pull, push = flush_ready_replies(flower_loop._pull_and_store_message, flower_loop._push_messages)
    one_turn(pull, push, state, store, link)
    assert [(m.metadata.message_id, m.metadata.run_id) for m in link.sent] == [(reply.metadata.message_id, 11)]
    assert link.sent[0].content["metrics"]["loss"] == 0.5
    assert state.get_messages_legacy(is_reply=True) == [], "a sent reply leaves the node state"
    one_turn(pull, push, state, store, link)
    assert len(link.sent) == 1, "nothing is sent twice"
    assert "left waiting" in caplog.text


def test_flowers_own_loop_leaves_the_reply_stranded():
    """The control: the same state under Flower's unchanged steps sends nothing, so
    the test above can fail."""
    state, store, _ = node_with_a_stranded_reply(run_id=11)
    link = Link()
    for _ in range(3):
        one_turn(flower_loop._pull_and_store_message, flower_loop._push_messages, state, store, link)
    assert link.sent == []
    assert len(state.get_messages_legacy(is_reply=True)) == 1
