"""The ClientApp: one train and one evaluate handler, the same in simulation and deployment.

Every reply holds exactly one ArrayRecord (train only) and one MetricRecord, the
contract of Flower's built-in strategies, plus a ConfigRecord naming the hospital.
A bad input raises a FedwardError before anything is trained or sent; Flower turns
it into an error reply that the server logs with the hospital's node id.
"""

from __future__ import annotations

import time
import zlib

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.hospital import HospitalData, hospital_data
from client.privacy_state import load_dp_state, save_dp_state
from common.calibration import prior_corrected
from common.config import RunConfig
from common.device import pick_device
from common.serialization import load_arrays, to_arrays
from common.tasks import get_task, resolve

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, HospitalData]:
    config = resolve(RunConfig.from_mapping(dict(msg.content["config"])))
    return config, hospital_data(config, context.node_config)


def _reply(msg: Message, hospital: HospitalData, metrics: dict, arrays=None) -> Message:  # type: ignore[no-untyped-def]
    content = RecordDict({"metrics": MetricRecord(metrics), "hospital": ConfigRecord({"name": hospital.name})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config, hospital = _setup(msg, context)
    task = get_task(config.task)
    model = task.build_model(hospital.input_shape, hospital.num_classes, config)
    load_arrays(model, msg.content["arrays"])
    dp = load_dp_state(context, config, len(hospital.train)) if config.dp else None
    server_round = int(msg.content["config"].get("server-round", 0))
    seed = config.seed * 100_003 + server_round * 1_009 + zlib.crc32(hospital.name.encode()) % 997
    start = time.perf_counter()
    outcome = task.train(model, hospital.train, hospital.num_classes, config, dp, pick_device(), seed)
    seconds = time.perf_counter() - start
    if dp is not None:
        save_dp_state(context, dp)  # the history survives to the next round of this run
    metrics = {
        "num-examples": outcome.num_examples,
        "train-loss": outcome.loss,
        "epsilon": dp.epsilon if dp else 0.0,
        "noise-multiplier": dp.noise_multiplier if dp else 0.0,
        "steps": outcome.steps,
        "seconds": seconds,
    }
    return _reply(msg, hospital, metrics, to_arrays(model))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config, hospital = _setup(msg, context)
    task = get_task(config.task)
    model = task.build_model(hospital.input_shape, hospital.num_classes, config)
    load_arrays(model, msg.content["arrays"])
    start = time.perf_counter()
    device = pick_device()
    if task.classifier and config.prior_correction:
        model = prior_corrected(model, hospital.train, hospital.num_classes, device)
    scores = task.evaluate(model, hospital.test, device)
    metrics = {"num-examples": len(hospital.test), **scores, "seconds": time.perf_counter() - start}
    return _reply(msg, hospital, metrics)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The shape of this hospital's data, so a server without data can build the model."""
    config, hospital = _setup(msg, context)
    spec = {"num-examples": len(hospital.train), "num-classes": hospital.num_classes,
            "input-shape": [int(d) for d in hospital.input_shape]}
    return _reply(msg, hospital, spec)
