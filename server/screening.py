"""Drop train replies that must not reach aggregation, and say why.

A refusal (a hospital's privacy ledger said no), an error reply, a reply without exactly one
ArrayRecord and one MetricRecord, weights whose keys or shapes differ from the
global model's, or weights with NaN/Inf are set aside with the hospital and the
reason; so are updates whose norm is far above the round's median
(`outlier-factor`). The rest are aggregated. `evaluations` does the same for the
scores a fused train reply carries in its `evaluation` record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from server.exchange import DESTINATION


@dataclass(frozen=True)
class Rejection:
    hospital: str
    reason: str


_NAMES: dict[int, str] = {}  # node id -> hospital name, from this process's earlier replies


_NAMED_ERROR = re.compile(r"\bhospital ([^:]+?)(?: refused)?: ")  # client/failures.py, client/secure.py


def hospital_of(msg: Message) -> str:
    """The hospital's name: from the reply (an error reply names it first), else from an
    earlier reply of the same node."""
    node = DESTINATION.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
    if msg.has_error():
        named = _NAMED_ERROR.search(msg.error.reason or "")
        if named:
            _NAMES.setdefault(node, named.group(1))
    else:
        record = msg.content.config_records.get("hospital")
        if record is not None and "name" in record:
            _NAMES[node] = str(record["name"])
    return _NAMES.get(node, f"node-{node}")


def screen(
    replies: list[Message], reference: ArrayRecord, train: bool, outlier_factor: float = 0.0,
) -> tuple[list[Message], list[Rejection]]:
    accepted: list[Message] = []
    norms: list[float] = []
    rejected: list[Rejection] = []
    ref = {k: a.numpy() for k, a in reference.items()}  # each array is decoded once per round
    for msg in replies:
        reason = _problem(msg, ref, train)
        norm = 0.0
        if reason is None and train:
            norm, reason = _norm_or_problem(msg, ref)
        if reason is None:
            accepted.append(msg)
            norms.append(norm)
        else:
            rejected.append(Rejection(hospital_of(msg), reason))
    if train and outlier_factor > 0 and len(accepted) >= 3:
        accepted, outliers = _norm_outliers(accepted, norms, outlier_factor)
        rejected.extend(outliers)
    return accepted, rejected


def evaluations(replies: list[Message]) -> tuple[list[tuple[str, MetricRecord]], list[Rejection]]:
    """Each hospital's fused evaluation, numbers only; one without a whole `num-examples` is set aside."""
    scores: list[tuple[str, MetricRecord]] = []
    rejected: list[Rejection] = []
    for msg in replies:
        if msg.has_error() or "evaluation" not in msg.content.config_records:
            continue
        values = {k: v for k, v in msg.content.config_records["evaluation"].items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        if not isinstance(values.get("num-examples"), int) or values["num-examples"] < 0:
            rejected.append(Rejection(hospital_of(msg), "evaluation needs a whole num-examples >= 0"))
        else:
            scores.append((hospital_of(msg), MetricRecord(values)))
    return scores, rejected


def _norm_or_problem(msg: Message, ref: dict[str, np.ndarray]) -> tuple[float, str | None]:
    """One pass over the update: its norm, or the array holding NaN/Inf.

    Squares are summed in the arrays' own float type, one BLAS dot per array: a NaN or
    Inf anywhere makes that sum non-finite, and only then is the array searched.
    """
    arrays = next(iter(msg.content.array_records.values()))
    total = 0.0
    for key, array in arrays.items():
        values = array.numpy()
        if values.dtype.kind != "f":
            continue
        diff = (values - ref[key]).ravel()
        square = float(np.dot(diff, diff))
        if not np.isfinite(square):
            if not np.isfinite(values).all():
                return 0.0, f"weight {key} holds NaN or Inf"
            square = float(np.dot(diff.astype(np.float64), diff.astype(np.float64)))  # float32 overflow
        total += square
    return total**0.5, None


def _norm_outliers(
    accepted: list[Message], norms: list[float], factor: float,
) -> tuple[list[Message], list[Rejection]]:
    """Updates whose norm is more than `factor` x the median norm of this round's updates.

    Needs 3 or more updates: with two, nothing says which one is the odd one.
    """
    median = float(np.median(norms))
    keep, out = [], []
    for msg, norm in zip(accepted, norms, strict=True):
        if median > 0 and norm > factor * median:
            out.append(Rejection(hospital_of(msg), f"update norm {norm:.3g} is {norm / median:.1f}x the round's median {median:.3g} (outlier-factor {factor:g})"))
        else:
            keep.append(msg)
    return keep, out


def _problem(msg: Message, ref: dict[str, np.ndarray], train: bool) -> str | None:
    """Structural problems: error, refusal, records, keys, shapes (read from the headers)."""
    if msg.has_error():
        return f"error reply: {msg.error.reason}"
    content = msg.content
    refusal = content.config_records.get("refusal")
    if refusal is not None:
        detail = refusal.get("detail", "")
        return f"refused: {refusal.get('reason', '?')}" + (f" ({detail})" if detail else "")
    if len(content.metric_records) != 1 or "num-examples" not in next(iter(content.metric_records.values())):
        return "reply needs exactly one MetricRecord with num-examples"
    if not train:
        return None
    if len(content.array_records) != 1:
        return "reply needs exactly one ArrayRecord"
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(ref):
        return "weights have different keys from the global model"
    for key, array in arrays.items():
        if tuple(array.shape) != ref[key].shape:
            return f"weight {key} has shape {tuple(array.shape)}, expected {ref[key].shape}"
    return None
