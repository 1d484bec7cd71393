"""The hospital's side of secure aggregation (Flower's SecAgg+), on the one ClientApp.

Flower's `secaggplus_mod` runs the protocol: key set-up, secret shares, and in
the masked-vectors stage it calls the train handler, quantises the returned
weights, adds the masks and sends only the masked integers. That stage speaks
the legacy FitIns/FitRes form (`fitins.parameters`, `fitres.parameters`), so
this module translates it to the handler's own content and back:

- in: the global weights in FitIns order, their names from the run's
  `fedward-array-keys` setting; the run config as is;
- out: the hospital's *update* (new weights - global weights), which the mod
  masks. Updates are small, so the quantiser's clipping range fits them; whole
  weights could exceed it and would be clipped silently.

A hospital that refuses the round (privacy budget) raises `SecureRoundRefused`:
in SecAgg+ a refusal has to look like a dropout, which the protocol survives by
reconstructing the refusing hospital's masks from its neighbours' shares. Its
text names only the reason ("refused: budget"); the detail stays in the log.

Checks fedward adds to Flower's client side of the protocol:
- the masked stage is taken only from a message that came through the SecAgg+
  mod (it carries the protocol's configs): a plain message dressed as one would
  otherwise get the update back unmasked;
- before unmasking, the server's lists of active and dropped nodes must be
  disjoint, and this node must not be listed as dropped: a node in both lists
  would give away both its private-mask seed and its pairwise-mask key, and the
  server could unmask its update (Flower does not check this);
- a round sent under SecAgg+ is never re-sent as it was (client/sent_rounds.py):
  its replay is trained and charged anew, so subtracting the sums of two
  different subsets cannot isolate one hospital's update.
A remaining limit of SecAgg+ itself: a server that tells different hospitals
different lists, or joins nodes of its own, is not detected here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from common.errors import FedwardError
from common.serialization import ARRAY_KEYS

CLIPPED = "secagg-clipped-values"  # update values outside the quantiser's range (sent clipped)


class SecureRoundRefused(FedwardError):
    """The hospital refused a secure round; the protocol treats it as a dropout."""


class UnsafeUnmask(FedwardError):
    """The server's unmask request would reveal a hospital's update; nothing is sent."""


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod for messages of the protocol; plain rounds pass straight on."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        check_unmask_request(msg, context)
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def check_unmask_request(msg: Message, context: Context) -> None:
    """Refuse an unmask stage whose active and dropped lists overlap or list this node as dropped."""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) != Stage.UNMASK:
        return
    active = {int(n) for n in configs.get(Key.ACTIVE_NODE_ID_LIST, [])}  # type: ignore[union-attr]
    dropped = {int(n) for n in configs.get(Key.DEAD_NODE_ID_LIST, [])}  # type: ignore[union-attr]
    both = sorted(active & dropped)
    me = msg.metadata.dst_node_id
    if both or me in dropped:
        raise UnsafeUnmask(
            f"secure aggregation: the server asked to unmask with node(s) {both or [me]} listed as "
            f"{'both active and dropped' if both else 'dropped, though this node is answering'}; that would "
            "reveal single updates, so this hospital sends no key shares"
        )


def is_masked_stage(msg: Message) -> bool:
    """The masked-vectors stage, handed on by Flower's SecAgg+ mod (which masks what it returns)."""
    return "fitins.parameters" in msg.content.array_records and RECORD_KEY_CONFIGS in msg.content.config_records


def masked_reply(msg: Message, train: Callable[[RecordDict], RecordDict], context: Context) -> Message:
    """Run `train` on the FitIns of the masked-vectors stage; reply a FitRes of the update."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    keys = str(config.pop(ARRAY_KEYS, "")).split("\n")
    weights = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(weights):
        raise FedwardError(
            f"secure round: {len(weights)} arrays but {len(keys)} names in {ARRAY_KEYS}; "
            "server and hospital must run the same fedward version"
        )
    global_arrays = ArrayRecord({k: Array(np.asarray(w)) for k, w in zip(keys, weights, strict=True)})
    out = train(RecordDict({"arrays": global_arrays, "config": ConfigRecord(config)}))
    hospital = str(out["hospital"]["name"])
    if "refusal" in out.config_records:
        refusal = out["refusal"]
        raise SecureRoundRefused(f"hospital {hospital} refused: {refusal['reason']}")
    new = out["arrays"]
    update = [new[k].numpy().astype(np.float64) - w.astype(np.float64) for k, w in zip(keys, weights, strict=True)]
    metrics = {k: v for k, v in out["metrics"].items() if isinstance(v, int | float)}
    clip = _clipping_range(context)
    metrics[CLIPPED] = int(sum(int(np.count_nonzero(np.abs(u) > clip)) for u in update)) if clip else 0
    if metrics[CLIPPED]:
        print(f"hospital {hospital}: {metrics[CLIPPED]} update values exceed the secure-aggregation "
              f"range +-{clip:g} and are sent clipped", flush=True)
    num_examples = int(metrics.pop("num-examples"))
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(update),
        num_examples=num_examples,
        metrics={**metrics, "hospital": hospital,  # and what its epsilon protects, as a plain reply names it
                 **({"privacy-unit": str(out["hospital"]["privacy-unit"])} if "privacy-unit" in out["hospital"] else {})},
    )
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _clipping_range(context: Context) -> float:
    state = context.state.config_records.get(RECORD_KEY_STATE)
    return float(state.get("clipping_range", 0.0)) if state is not None else 0.0  # type: ignore[arg-type]
