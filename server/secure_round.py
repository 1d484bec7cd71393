"""A train phase under secure aggregation: Flower's SecAgg+ workflow, driven per round.

Flower 1.41 offers SecAgg+ only in its legacy stack (`SecAggPlusWorkflow` wants a
`LegacyContext` with a legacy strategy). This module gives it exactly that for one
round, so the rest of the run (our strategy, evaluation, records, checkpoints)
stays on the Message API and there is one ServerApp and one ClientApp:

- a query learns the sampled hospitals' names and train sizes (sizes set
  SecAgg+'s `max_weight`, so the largest hospital's weight is quantised at full
  precision and none overflows);
- `_OneRound`, a legacy strategy of two methods, hands the workflow the FitIns
  (global weights plus the run config) and receives what the protocol lets the
  server see: the num-examples-weighted mean of the hospitals' updates, unmasked
  only as a sum, and each hospital's plaintext metrics;
- the new global weights (global + mean update) go to our strategy as a single
  reply, so FedAvg/FedProx keep them and FedAdam & co. take their server step.

Individual updates never exist on the server, so per-update screening (NaN,
norm outliers) cannot run: the aggregate is checked instead, and robust
strategies (median, trimmed mean, Krum) are refused with secure aggregation.
Precision: SecAgg+ quantises each update value with stochastic rounding to a
step of 2*CLIPPING_RANGE/QUANTIZATION_RANGE; the mean is off by less than
K * step / sum_i(n_i / max_weight) for K hospitals (see `error_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.serialization import ARRAY_KEYS
from server.exchange import send_and_receive
from server.screening import Rejection
from server.strategies import weighted_nanmean

CLIPPING_RANGE = 8.0  # update values are clipped to +-this before quantisation
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32


def error_bound(sizes: list[int], max_weight: float) -> float:
    """Largest possible |secure mean - exact mean| of one value, for these hospitals."""
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    return len(sizes) * step / sum(n / max_weight for n in sizes)


@dataclass
class SecureOutcome:
    """What one secure train phase leaves the server with."""

    arrays: ArrayRecord | None  # new global weights; None: the round produced none
    hospitals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # plaintext metrics
    rejections: list[Rejection] = field(default_factory=list)
    metrics: MetricRecord | None = None
    units: dict[str, str] = field(default_factory=dict)  # each hospital's privacy unit, as its reply names it


@dataclass
class _Proxy:
    node_id: int


class _OneRound:
    """The two legacy-strategy methods SecAggPlusWorkflow calls, for one round."""

    def __init__(self, fitins: FitIns, nodes: list[int]) -> None:
        self.fitins, self.nodes = fitins, nodes
        self.mean_update: list[np.ndarray] | None = None
        self.results: list[tuple[int, Any]] = []
        self.failures: list[BaseException] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return [(_Proxy(node), self.fitins) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        # SecAgg+ sets every FitRes's parameters to the same unmasked weighted mean.
        self.results = [(proxy.node_id, res) for proxy, res in results]
        self.failures = list(failures)
        if results:
            self.mean_update = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class _FastGrid:
    """The one Grid method the workflow calls, with our 0.1 s reply poll."""

    def __init__(self, grid: Grid, timeout: float) -> None:
        self.grid, self.timeout = grid, timeout
        self.errors: list[Message] = []

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        replies = send_and_receive(self.grid, messages, timeout or self.timeout)
        self.errors.extend(m for m in replies if m.has_error())
        return replies


def secure_train(
    grid: Grid, config: RunConfig, strategy: Strategy, server_round: int,
    arrays: ArrayRecord, sent: ConfigRecord,
) -> SecureOutcome:
    instructions = list(strategy.configure_train(server_round, arrays, sent, grid))
    round_config = dict(instructions[0].content["config"]) if instructions else {}
    sizes, names = _query_sizes(grid, config, [m.metadata.dst_node_id for m in instructions])
    nodes = sorted(sizes)
    missing = [Rejection(f"node-{m.metadata.dst_node_id}", "no reply to the size query")
               for m in instructions if m.metadata.dst_node_id not in sizes]
    if len(nodes) < 2:
        return SecureOutcome(None, rejections=[*missing, Rejection(
            "all", f"secure aggregation needs 2 or more hospitals; {len(nodes)} answered")])
    max_weight = float(max(max(sizes.values()), 1))
    keys = list(arrays.keys())
    fitins = FitIns(
        ndarrays_to_parameters([arrays[k].numpy() for k in keys]),
        {**round_config, ARRAY_KEYS: "\n".join(keys)},
    )
    one_round = _OneRound(fitins, nodes)
    context = _legacy_context(one_round, server_round, fitins.parameters)
    fast = _FastGrid(grid, config.round_timeout)
    workflow = SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=0.5, max_weight=max_weight,
        clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE, timeout=config.round_timeout,
    )
    workflow(fast, context)  # type: ignore[arg-type]
    answered = {node for node, _ in one_round.results}
    rejections = missing + [
        Rejection(names[node], _reason(fast.errors, node)) for node in nodes if node not in answered
    ]
    if one_round.mean_update is None:
        return SecureOutcome(None, rejections=[*rejections, Rejection(
            "all", "secure aggregation halted: too few hospitals completed the protocol")])
    new = _apply(arrays, keys, one_round.mean_update)
    if new is None:
        return SecureOutcome(None, rejections=[*rejections, Rejection("all", "the secure aggregate holds NaN or Inf")])
    hospitals = [(str(res.metrics.get("hospital", names[node])), {**_numeric(res.metrics), "num-examples": res.num_examples})
                 for node, res in one_round.results]
    units = {name: str(res.metrics["privacy-unit"])
             for (name, _), (_, res) in zip(hospitals, one_round.results, strict=True) if "privacy-unit" in res.metrics}
    reply = _as_reply(new, hospitals)
    aggregated, _ = strategy.aggregate_train(server_round, [reply])
    metrics = MetricRecord({k: v for k, v in reply.content["metrics"].items()})
    return SecureOutcome(aggregated if aggregated is not None else new, hospitals, rejections, metrics, units)


def _query_sizes(grid: Grid, config: RunConfig, nodes: list[int]) -> tuple[dict[int, int], dict[int, str]]:
    content = RecordDict({"config": ConfigRecord(config.to_mapping())})
    queries = [Message(content=content, message_type="query", dst_node_id=node) for node in nodes]
    sizes, names = {}, {node: f"node-{node}" for node in nodes}
    for reply in send_and_receive(grid, queries, config.round_timeout):
        if reply.has_error():
            continue
        node = reply.metadata.src_node_id
        sizes[node] = int(reply.content["metrics"]["num-examples"])  # type: ignore[arg-type]
        names[node] = str(reply.content["hospital"]["name"])
    return sizes, names


def _legacy_context(strategy: _OneRound, server_round: int, parameters: Parameters) -> LegacyContext:
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=strategy)  # type: ignore[arg-type]
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, keep_input=True)
    return context


def _reason(errors: list[Message], node: int) -> str:
    """Why a hospital left: its refusal (privacy budget) as a refusal, else the error."""
    for msg in errors:
        if msg.metadata.src_node_id == node:
            text = msg.error.reason
            _, refused, why = text.partition(" refused: ")
            return f"refused: {why}" if refused else f"left the secure round: {text}"
    return "left the secure round (no reply within round-timeout)"


def _apply(arrays: ArrayRecord, keys: list[str], mean_update: list[np.ndarray]) -> ArrayRecord | None:
    out = {}
    for key, delta in zip(keys, mean_update, strict=True):
        old = arrays[key].numpy()
        if old.dtype.kind != "f":
            out[key] = old
            continue
        new = (old.astype(np.float64) + delta).astype(old.dtype)
        if not np.isfinite(new).all():
            return None
        out[key] = new
    return ArrayRecord({k: Array(v) for k, v in out.items()})


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _as_reply(arrays: ArrayRecord, hospitals: list[tuple[str, dict[str, Any]]]) -> Message:
    """The securely averaged weights as one train reply, weighted by all examples."""
    records = [RecordDict({"metrics": MetricRecord(m)}) for _, m in hospitals]
    means = weighted_nanmean(records, "num-examples")
    total = sum(m["num-examples"] for _, m in hospitals)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": total, **means})})
    instruction = Message(content=RecordDict(), message_type="train", dst_node_id=0)
    return Message(content=content, reply_to=instruction)
