"""The ClientApp: one train and one evaluate handler, the same in simulation and deployment.

Every reply holds exactly one ArrayRecord (train only) and one MetricRecord, the
contract of Flower's built-in strategies, plus a ConfigRecord naming the hospital.
A train message whose config carries `fedward-evaluate-first` (fused rounds) is
first evaluated as received, i.e. the previous round's global model, and those
scores travel back as a ConfigRecord `evaluation` in the train reply: one message
per round instead of a train and an evaluate message.
A bad input raises a FedwardError before anything is trained or sent. No exception
text leaves the hospital: each handler answers a failure with an error reply that
holds only the hospital's name, a category and a reference into the hospital's own
log, where the full detail stays (client/failures.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.benefit import final_benefit
from client.failures import FAILURE_CODE, RunConfigError, failure_text
from client.node_keys import check_node_config
from client.hospital import HospitalData, hospital_data, hospital_name, node_settings
from client.node_privacy import NodePrivacy, node_privacy
from client.privacy_state import PRIOR_ROUND, PriorLabels, RunAccount
from client.secure import SecureRoundRefused, is_masked_stage, masked_reply, secagg_when_asked
from client.evaluation_limits import EvaluationRefused, allow_evaluation
from common.calibration import cross_fitted
from common.config import EVALUATE_FIRST, RunConfig
from common.device import pick_device
from common.errors import ConfigError, FedwardError
from common.privacy import epsilon_spent
from common.schedule import for_round
from common.ledger import BudgetExceeded, DatasetLine
from common.serialization import load_arrays, to_arrays
from common.training import dp_plan, predict_proba, scores_of
from common.tasks import get_task, resolve
from common.tasks.base import Task

app = ClientApp()


def _setup(content: RecordDict, context: Context) -> tuple[RunConfig, HospitalData]:
    try:
        config = resolve(RunConfig.from_mapping(dict(content["config"])))
    except ConfigError as err:
        raise RunConfigError(str(err)) from None
    return config, hospital_data(config, node_settings(context.node_config))


def _answer(msg: Message, context: Context, handle: Callable[[], Message]) -> Message:
    """`handle()`'s reply, or on any failure an error reply with no data in it."""
    try:
        check_node_config(node_settings(context.node_config))  # a misspelt key or bad value never trains
        return handle()
    except Exception as err:  # noqa: BLE001 - every failure is answered, none is quoted
        return Message(Error(code=FAILURE_CODE, reason=_failure(err, context)), reply_to=msg)


def _failure(err: BaseException, context: Context) -> str:
    """Log `err` in the hospital's log; the one line the server may read about it."""
    settings = node_settings(context.node_config)
    return failure_text(err, hospital_name(settings), settings)


def _reply(  # type: ignore[no-untyped-def]
    hospital: HospitalData, metrics: dict, arrays=None, refusal: str = "", evaluation: dict | None = None,
    unit: str = "", prior: ConfigRecord | None = None,
) -> RecordDict:
    """`unit`: what the hospital's epsilon protects ("patient" or "record"), for the model card;
    `prior`: the run's noisy class histogram (client/privacy_state.py), the same in every reply."""
    named = {"name": hospital.name, **({"privacy-unit": unit} if unit else {})}
    content = RecordDict({"metrics": MetricRecord(metrics), "hospital": ConfigRecord(named)})
    if prior is not None:
        content["class-prior"] = prior
    if arrays is not None:
        content["arrays"] = arrays
    if evaluation is not None:  # a ConfigRecord: the strategies want exactly one MetricRecord per reply
        content["evaluation"] = ConfigRecord(evaluation)
    if refusal:  # the reason alone ("budget"): epsilon spent and budget stay in the hospital's log
        content["refusal"] = ConfigRecord({"reason": refusal.partition(": ")[0]})
    return content


def _account(
    content: RecordDict, flwr_run_id: int, context: Context, config: RunConfig, hospital: HospitalData,
    privacy: NodePrivacy,
) -> RunAccount:
    """The run's DP account: the hospital's ledger line (the data source it names, not the file's
    content), or the node's context without a ledger. The run is known by Flower's run id (the
    message's metadata) and fedward's (kept across a resume); the ledger links both."""
    plan = dp_plan(hospital.train, config)  # the privacy unit (patient or record), its sample rate and steps
    delta = privacy.delta_for(plan.units, config.delta, plan.unit)
    line = DatasetLine(privacy.dataset_name or hospital.name, hospital.fingerprint, privacy.budget, delta, plan.unit)
    run_id = str(content["config"].get("fedward-run-id", f"flwr-{flwr_run_id}"))
    releases_prior = config.balanced_rule and get_task(config.task).classifier
    account = RunAccount(context, config, privacy, line, run_id, plan, str(flwr_run_id), releases_prior,
                         balanced_training=get_task(config.task).balanced_training)
    if account.first_round:
        print(privacy.announcement(hospital.name), flush=True)
    return account


def _no_dp(privacy: NodePrivacy) -> None:
    """A run without DP: refused unless the hospital's own node config allows it."""
    if privacy.requires_dp:
        raise BudgetExceeded(
            "dp-required: this hospital trains only with DP (node config allow-no-dp=true permits dp=false); "
            "the run has dp=false"
        )


@app.train(mods=[secagg_when_asked])
def train(msg: Message, context: Context) -> Message:
    """Plain rounds answer the server directly. Under secure aggregation Flower's
    SecAgg+ mod runs the key exchange itself and hands only the masked-vectors stage
    here, in the legacy FitIns form; `client.secure` translates it both ways."""
    if is_masked_stage(msg):  # Flower's SecAgg+ mod needs a failure raised, to treat it as a dropout
        try:
            return masked_reply(msg, lambda content: _train(content, context, msg.metadata.run_id, masked=True),
                                context)
        except SecureRoundRefused:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised without its text
            raise SecureRoundRefused(_failure(err, context)) from None
    return _answer(msg, context, lambda: Message(content=_train(msg.content, context, msg.metadata.run_id),
                                                 reply_to=msg))


def _train(content: RecordDict, context: Context, flwr_run_id: int, masked: bool = False) -> RecordDict:
    config, hospital = _setup(content, context)
    task = get_task(config.task)
    model = task.build_model(hospital.input_shape, hospital.num_classes, config)
    load_arrays(model, content["arrays"])
    server_round = int(content["config"].get("server-round", 0))
    evaluation = _fused_evaluation(task, model, config, hospital, context) if content["config"].get(EVALUATE_FIRST) else None
    account, sent, dp = None, None, None
    privacy = node_privacy(node_settings(context.node_config))
    try:
        if privacy.require_secure_aggregation and not masked:
            raise BudgetExceeded("secure-aggregation-required: node config require-secure-aggregation=true; "
                                 "the server sent a plain train message")
        account = _account(content, flwr_run_id, context, config, hospital, privacy) if config.dp else _no_dp(privacy)
        sent = account.replay(server_round) if account and not masked else None
        labels = PriorLabels(hospital.train.y, hospital.num_classes, hospital.train.patients,
                             privacy.training_seed(config, PRIOR_ROUND, hospital.name) % (1 << 63)) if account else None
        dp = account.reserve(server_round, labels) if account and sent is None else None
    except BudgetExceeded as refusal:
        if account:
            account.close()
        print(f"hospital {hospital.name} refused round {server_round}: {refusal}", flush=True)
        return _reply(hospital, {"num-examples": 0}, refusal=str(refusal), evaluation=evaluation)
    if account and sent is not None:  # a resumed round: what was sent, again; no training, no charge
        account.close()
        print(f"hospital {hospital.name}: round {server_round} of run {account.run_id} was sent before; "
              "sending the same update again, uncharged", flush=True)
        return _reply(hospital, sent.metrics, sent.arrays, evaluation=evaluation, unit=account.unit,
                      prior=account.prior_record())
    seed = privacy.training_seed(config, server_round, hospital.name)  # secret under DP
    this_round = for_round(config, server_round)  # its lr from the run's lr-schedule
    start = time.perf_counter()
    try:
        outcome = task.train(model, hospital.train, hospital.num_classes, this_round, dp, pick_device(), seed)
    except Exception:
        if account:  # the reservation stays, never trained under again: a failure may depend on the data
            account.abandon()
        raise
    except BaseException:  # interrupted (Ctrl-C): like a kill, the round may train again under its reservation
        if account:
            account.close()
        raise
    seconds = time.perf_counter() - start
    update = to_arrays(model)
    epsilon = account.epsilon_after() if account else 0.0
    if account and dp is not None and epsilon_spent(dp.history, account.delta) > epsilon + 1e-6:
        account.abandon()  # the training's own accountant says more than the ledger will: send nothing
        raise FedwardError("internal: the round spent more privacy than was reserved for it; nothing was sent")
    # No statistic of the training data leaves un-noised: no training loss (it revealed membership
    # through a crafted model), the planned steps rather than the realised ones (which count empty
    # Poisson batches), and the time rounded to 0.1 s.
    metrics = {
        "num-examples": outcome.num_examples,
        "epsilon": epsilon,
        "noise-multiplier": dp.noise_multiplier if dp else 0.0,
        "delta": account.delta if account else 0.0,  # the hospital's own (node config), not the run's
        "steps": account.steps_per_round if account else outcome.steps,
        "lr": this_round.lr,  # a setting, not a statistic of the data
        "seconds": round(seconds, 1),
        "skipped-files": hospital.skipped_files,
    }
    if account:
        account.settle(update, metrics, masked)  # kept for a replay, digest in the ledger, before it leaves
    return _reply(hospital, metrics, update, evaluation=evaluation, unit=account.unit if account else "",
                  prior=account.prior_record() if account and not masked else None)


def _evaluate(
    task: Task, model: torch.nn.Module, config: RunConfig, hospital: HospitalData, context: Context,
) -> dict:
    """The model's scores on this hospital's held-out split, within the hospital's evaluation
    limits (EvaluationRefused otherwise). Only the held-out split is touched: its prior
    correction leaves each record out (common/calibration.py), never estimated on training data."""
    allow_evaluation(context, len(hospital.test), hospital.name)
    start = time.perf_counter()
    device = pick_device()
    if task.classifier and config.prior_correction:
        proba = predict_proba(model, hospital.test.x, device)
        scores = scores_of(hospital.test.y, cross_fitted(proba, hospital.test.y, hospital.num_classes), ranking=proba)
    else:
        scores = task.evaluate(model, hospital.test, device)
    return {"num-examples": len(hospital.test), **scores, "seconds": round(time.perf_counter() - start, 1),
            "skipped-files": hospital.skipped_files}


def _fused_evaluation(
    task: Task, model: torch.nn.Module, config: RunConfig, hospital: HospitalData, context: Context,
) -> dict | None:
    """A fused round's scores of the received model, or None where the hospital refuses them
    (it still trains: a refused evaluation must not cost the round)."""
    try:
        return _evaluate(task, model, config, hospital, context)
    except EvaluationRefused as refusal:
        print(f"hospital {hospital.name}: {refusal}", flush=True)
        return None


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, lambda: Message(content=_evaluate_message(msg.content, context), reply_to=msg))


def _evaluate_message(content: RecordDict, context: Context) -> RecordDict:
    config, hospital = _setup(content, context)
    task = get_task(config.task)
    model = task.build_model(hospital.input_shape, hospital.num_classes, config)
    load_arrays(model, content["arrays"])
    try:
        metrics = _evaluate(task, model, config, hospital, context)  # its limits bound a shared report too
    finally:  # after the last round, benefit-report=true: local-only and personalised models, kept here
        shared = final_benefit(content["config"], context, task, model, config, hospital, pick_device())
    reply = _reply(hospital, metrics)
    if shared is not None:  # share-benefit=true: the scores, no model; a ConfigRecord beside the one MetricRecord
        reply["benefit"] = ConfigRecord(shared)
    return reply


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The shape of this hospital's data, so a server without data can build the model."""
    def handle() -> Message:
        config, hospital = _setup(msg.content, context)
        spec = {"num-examples": len(hospital.train), "num-classes": hospital.num_classes,
                "input-shape": [int(d) for d in hospital.input_shape]}
        return Message(content=_reply(hospital, spec), reply_to=msg)

    return _answer(msg, context, handle)
