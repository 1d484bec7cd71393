"""Drop train replies that must not reach aggregation, and say why.

A refusal (a hospital's privacy ledger said no), an error reply, a reply without exactly one
ArrayRecord and one MetricRecord, weights whose keys or shapes differ from the
global model's, or weights with NaN/Inf are set aside with the hospital and the
reason; so are updates whose norm is far above the round's median
(`outlier-factor`). The rest are aggregated.
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


def screen(
    replies: list[Message], reference: ArrayRecord, train: bool, outlier_factor: float = 0.0,
) -> tuple[list[Message], list[Rejection]]:
    accepted: list[Message] = []
    rejected: list[Rejection] = []
    shapes = {k: tuple(a.shape) for k, a in reference.items()}
    for msg in replies:
        reason = _problem(msg, shapes, train)
        if reason is None:
            accepted.append(msg)
        else:
            rejected.append(Rejection(hospital_of(msg), reason))
    if train and outlier_factor > 0 and len(accepted) >= 3:
        accepted, outliers = _norm_outliers(accepted, reference, outlier_factor)
        rejected.extend(outliers)
    return accepted, rejected


def update_norm(msg: Message, reference: ArrayRecord) -> float:
    """L2 norm of (hospital's weights - global weights) over all float arrays."""
    arrays = next(iter(msg.content.array_records.values()))
    total = 0.0
    for key, array in arrays.items():
        values = array.numpy()
        if values.dtype.kind == "f":
            diff = values.astype(np.float64) - reference[key].numpy().astype(np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return total**0.5


def _norm_outliers(
    accepted: list[Message], reference: ArrayRecord, factor: float,
) -> tuple[list[Message], list[Rejection]]:
    """Updates whose norm is more than `factor` x the median norm of this round's updates.

    Needs 3 or more updates: with two, nothing says which one is the odd one.
    """
    norms = [update_norm(msg, reference) for msg in accepted]
    median = float(np.median(norms))
    keep, out = [], []
    for msg, norm in zip(accepted, norms, strict=True):
        if median > 0 and norm > factor * median:
            out.append(Rejection(hospital_of(msg), f"update norm {norm:.3g} is {norm / median:.1f}x the round's median {median:.3g} (outlier-factor {factor:g})"))
        else:
            keep.append(msg)
    return keep, out


def _problem(msg: Message, shapes: dict[str, tuple[int, ...]], train: bool) -> str | None:
    if msg.has_error():
        return f"error reply: {msg.error.reason}"
    content = msg.content
    refusal = content.config_records.get("refusal")
    if refusal is not None:
        return f"refused: {refusal.get('reason', '?')} ({refusal.get('detail', '')})"
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
