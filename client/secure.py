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
reconstructing the refusing hospital's masks from its neighbours' shares.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from common.errors import FedwardError
from common.serialization import ARRAY_KEYS

CLIPPED = "secagg-clipped-values"  # update values outside the quantiser's range (sent clipped)


class SecureRoundRefused(FedwardError):
    """The hospital refused a secure round; the protocol treats it as a dropout."""


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod for messages of the protocol; plain rounds pass straight on."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_masked_stage(msg: Message) -> bool:
    return "fitins.parameters" in msg.content.array_records


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
        raise SecureRoundRefused(f"hospital {hospital} refused: {refusal['reason']} ({refusal['detail']})")
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
        metrics={**metrics, "hospital": hospital},
    )
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _clipping_range(context: Context) -> float:
    state = context.state.config_records.get(RECORD_KEY_STATE)
    return float(state.get("clipping_range", 0.0)) if state is not None else 0.0  # type: ignore[arg-type]
