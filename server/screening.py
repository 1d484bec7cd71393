"""Drop train replies that must not reach aggregation, and say why.

An error reply (a hospital refused or failed), a reply without exactly one
ArrayRecord and one MetricRecord, weights whose keys or shapes differ from the
global model's, or weights with NaN/Inf are set aside with the hospital and the
reason; the rest are aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message


@dataclass(frozen=True)
class Rejection:
    hospital: str
    reason: str


def hospital_of(msg: Message) -> str:
    if not msg.has_error():
        record = msg.content.config_records.get("hospital")
        if record is not None and "name" in record:
            return str(record["name"])
    return f"node-{msg.metadata.src_node_id}"


def screen(replies: list[Message], reference: ArrayRecord, train: bool) -> tuple[list[Message], list[Rejection]]:
    accepted: list[Message] = []
    rejected: list[Rejection] = []
    shapes = {k: tuple(a.shape) for k, a in reference.items()}
    for msg in replies:
        reason = _problem(msg, shapes, train)
        if reason is None:
            accepted.append(msg)
        else:
            rejected.append(Rejection(hospital_of(msg), reason))
    return accepted, rejected


def _problem(msg: Message, shapes: dict[str, tuple[int, ...]], train: bool) -> str | None:
    if msg.has_error():
        return f"error reply: {msg.error.reason}"
    content = msg.content
    if len(content.metric_records) != 1 or "num-examples" not in next(iter(content.metric_records.values())):
        return "reply needs exactly one MetricRecord with num-examples"
    if not train:
        return None
    if len(content.array_records) != 1:
        return "reply needs exactly one ArrayRecord"
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(shapes):
        return "weights have different keys from the global model"
    for key, array in arrays.items():
        values = array.numpy()
        if tuple(values.shape) != shapes[key]:
            return f"weight {key} has shape {tuple(values.shape)}, expected {shapes[key]}"
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return f"weight {key} holds NaN or Inf"
    return None
