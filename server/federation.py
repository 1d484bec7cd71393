"""One federated run: rounds of train, screen, aggregate, evaluate, record, checkpoint.

The strategy is a stock `flwr.serverapp.strategy` object; this loop drives its
configure/aggregate methods itself (as `Strategy.start` does) so that every round
can screen replies, write per-hospital records and a checkpoint.

Fused rounds (`fused-rounds`, the default): round r's train message asks each
hospital to evaluate the model it carries (round r-1's) before training it, and
those scores are recorded as round r-1's federated evaluation; after the last
round one evaluate-only message. A round costs one message per hospital instead
of two, which in a deployment is most of the round's overhead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.class_prior import MIN_PRIOR_SNR, global_prior, prior_total, reliable
from common.config import EVALUATE_FIRST, RunConfig
from common.data import TaskData
from common.device import pick_device
from common.errors import DataError, FedwardError
from common.serialization import load_arrays, to_arrays
from common.tasks import get_task, load_data, resolve
from server import central_dp
from server.benefit import card_section, shared_rows, table_rows, write_benefit
from server.exchange import send_and_receive
from server.init_weights import apply_init_weights, read_init_weights
from server.operating_point import balanced_scores, operating_point, prior_section, received_priors
from server.records import RunRecorder, row_of, save_checkpoint, save_final_model
from server.run_state import check_checkpoint_fits, restore_strategy, start
from server.report import model_card, write_model_card, write_report_png
from server.screening import Rejection, evaluations, screen
from server.secure_round import secure_train
from server.strategies import build_strategy, weighted_nanmean


def run_federation(grid: Grid, config: RunConfig) -> Path:
    config = resolve(config)  # the task's defaults (idempotent): e.g. balanced-tau 0 would decide by argmax
    init = read_init_weights(config.init_weights) if config.init_weights else None  # before anything is sent
    state = start(config)  # a new run directory, or the last checkpoint of a killed run
    config, out_dir = state.config, Path(state.config.out_dir)
    task = get_task(config.task)
    data, input_shape, num_classes = _data_spec(grid, config)
    torch.manual_seed(config.seed)
    model = task.build_model(input_shape, num_classes, config)
    if init is not None:
        apply_init_weights(model, init)
        print(f"global model starts from {init.path} (sha256 {init.sha256})", flush=True)
    if state.arrays is not None:  # before anything is sent: a model of other shapes cannot continue
        check_checkpoint_fits(state.arrays, {k: tuple(a.shape) for k, a in to_arrays(model).items()}, out_dir)
    arrays = state.arrays if state.arrays is not None else to_arrays(model)
    strategy = build_strategy(config)
    restore_strategy(strategy, state.strategy_state)
    recorder = RunRecorder(out_dir, config.num_server_rounds)
    if state.completed_round:
        print(f"resuming run {state.run_id} after round {state.completed_round} "
              f"(its own settings from {out_dir / 'run.json'})", flush=True)
    sent = ConfigRecord({**config.to_mapping(), "fedward-run-id": state.run_id})
    central = data if data is not None and data.test is not None else None
    device = pick_device()
    fused = config.fused_rounds and not config.secure_aggregation
    benefit: dict[str, dict] = {}  # hospital -> the benefit row it chose to share (share-benefit=true)
    # hospital -> its noisy class histogram (DP runs of classifiers, balanced-decision=true)
    priors: dict[str, np.ndarray] | None = {} if config.balanced_rule and task.classifier else None
    for server_round in range(state.completed_round + 1, config.num_server_rounds + 1):
        evaluate_first = fused and server_round > 1  # round 0's model (the initial one) is not evaluated
        arrays = _phase(grid, config, strategy, recorder, server_round, arrays, sent, True, evaluate_first,
                        priors=priors, num_classes=num_classes)
        if not fused or server_round == config.num_server_rounds:
            _phase(grid, config, strategy, recorder, server_round, arrays, sent, train=False, benefit=benefit)
        if central is not None and central.test is not None:
            t0 = time.perf_counter()
            load_arrays(model, arrays)
            scores = (balanced_scores(model, central.test, global_prior(list(priors.values())), device,
                                      config.balanced_tau) if priors and reliable(list(priors.values()))
                      else task.evaluate(model, central.test, device))  # the balanced rule where a prior came
            scores.update(num_examples=len(central.test), seconds=time.perf_counter() - t0)
            recorder.write(server_round, "server", "central", {k.replace("-", "_"): v for k, v in scores.items()})
        save_checkpoint(out_dir, server_round, arrays, strategy)

    recorder.close()
    save_final_model(out_dir, arrays)
    load_arrays(model, arrays)
    extra = task.finish(model, data, config, out_dir, device) if task.finish else {}
    if central is not None and central.test is not None and central.validation is not None \
            and task.classifier and num_classes == 2:
        point = operating_point(model, central.validation, central.test, device)
        if point is not None:
            extra["operating_point"] = point
            t = point["test"]
            print(f"operating point chosen on the validation split: P(class 1) >= {point['cut']:.4f}; test "
                  f"accuracy {t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, specificity "
                  f"{t['specificity']:.3f}", flush=True)
    if priors and not reliable(list(priors.values())):
        print(f"the hospitals' noisy class histograms total {prior_total(list(priors.values())):.0f} units, fewer than {MIN_PRIOR_SNR:g} times "
              f"their noise: the prior would be mostly noise, so decisions are by argmax (fewer units, e.g. a few "
              f"patients per hospital under patient-level DP)", flush=True)
    elif priors:
        extra["class_prior"] = prior_section(model, priors, central.test if central is not None else None, device,
                                             config.balanced_tau)
    elif priors is not None:
        print("no hospital released its class histogram (an epsilon too small for it, see the hospitals' logs): "
              "decisions by argmax", flush=True)
    card = model_card(config, recorder.rows, recorder.rejections, extra, data.source if data else config.data_path)
    card["model"] = {  # what a user needs to load final_model.pt (a state dict) and feed it
        "architecture": config.model, "input_shape": list(input_shape), "num_classes": num_classes,
        "weights": sum(int(a.numpy().size) for a in arrays.values()), "file": "final_model.pt",
        "build": "common.tasks.get_task(task).build_model(input_shape, num_classes, RunConfig.from_mapping(config))",
    }
    card["init_weights"] = init.card() if init is not None else None
    card["benefit"] = _benefit(benefit, card, task, config, out_dir, state.run_id, data, device)
    write_model_card(out_dir, card)
    if card["central_dp"]["enabled"]:
        c = card["central_dp"]
        print(f"central DP (hospital-level): epsilon {c['epsilon']:.3f} at delta {c['delta']:g} after "
              f"{c['releases']} noisy rounds (noise {c['noise_multiplier']:g}, clip {c['clipping_norm']:g})", flush=True)
    write_report_png(out_dir, recorder.rows)
    skipped = {r["round"] for r in card["rounds_skipped"] if r["split"] == "train"}
    if skipped >= set(range(1, config.num_server_rounds + 1)):
        raise FedwardError(
            f"no round of the run had a usable update (every hospital refused or was set aside in all "
            f"{config.num_server_rounds} rounds; reasons in {out_dir / 'rejections.jsonl'}): the model was never trained"
        )
    print(f"run finished: report in {out_dir}", flush=True)
    return out_dir


def _phase(
    grid: Grid, config: RunConfig, strategy: Strategy, recorder: RunRecorder,
    server_round: int, arrays: ArrayRecord, sent: ConfigRecord, train: bool, evaluate_first: bool = False,
    benefit: dict[str, dict] | None = None, priors: dict[str, np.ndarray] | None = None, num_classes: int = 0,
) -> ArrayRecord:
    """One train or evaluate exchange: configure, send, screen, record, aggregate.

    With `evaluate_first` the train messages also ask for the received model's scores,
    recorded as the previous round's evaluation. Returns the new global weights (train),
    or `arrays` unchanged (evaluate, or a train phase in which every reply was refused
    or rejected).
    """
    split = "train" if train else "evaluate"
    _wait_for_hospitals(grid, config)  # Flower's node sampling would wait forever
    t0 = time.perf_counter()
    if train and config.secure_aggregation:
        return _secure_phase(grid, config, strategy, recorder, server_round, arrays, sent, t0)
    configure = strategy.configure_train if train else strategy.configure_evaluate
    if evaluate_first:
        sent = ConfigRecord({**sent, EVALUATE_FIRST: True})
    replies = send_and_receive(grid, configure(server_round, arrays, sent, grid), config.round_timeout)
    if evaluate_first:
        _record_evaluations(recorder, server_round - 1, replies)
    if benefit is not None:  # the final evaluate replies of hospitals that share their benefit rows
        rows, malformed = shared_rows(replies)
        benefit.update(rows)
        recorder.reject(server_round, "benefit", malformed)
    accepted, rejected = screen(replies, arrays, train=train, outlier_factor=config.outlier_factor)
    if priors is not None:  # each hospital's noisy class histogram, the same in every reply of the run
        priors.update(received_priors(accepted, num_classes))
    recorder.reject(server_round, split, rejected)
    recorder.hospitals(server_round, split, accepted)
    needed = config.min_replies if train else 1
    if len(accepted) < needed:
        # Skipped, not retried: a retry would spend the hospitals' privacy budget again.
        reason = (f"round skipped: {len(accepted)} usable train replies, min-replies={needed}; global model kept"
                  if train else f"evaluation skipped: no usable {split} reply; no federated score this round")
        recorder.reject(server_round, split, [Rejection("all", reason)])
        return arrays
    if config.central_dp_noise > 0:
        central_dp.before_aggregation(strategy, accepted, train)
    if train:
        aggregated, metrics = strategy.aggregate_train(server_round, accepted)
    else:
        aggregated, metrics = None, strategy.aggregate_evaluate(server_round, accepted)
    recorder.aggregate(server_round, split, metrics and dict(metrics), time.perf_counter() - t0)
    return aggregated if aggregated is not None else arrays


def _benefit(
    shared: dict[str, dict], card: dict, task, config: RunConfig, out_dir: Path, run_id: str,  # type: ignore[no-untyped-def]
    data: TaskData | None, device: torch.device,
) -> dict | None:
    """The card's `benefit` (and benefit.csv, benefit.png) from the rows hospitals shared; in a
    simulation (the server reads the data) also the pooled model and the cross-site matrix."""
    if not shared:
        return None
    rows = table_rows(shared, list(card["hospitals"]))
    extra = {}
    if data is not None and task.classifier:
        from server.benefit_simulation import add_simulation_rows

        extra = add_simulation_rows(rows, task, config, out_dir, run_id, device)
    write_benefit(out_dir, rows)
    return card_section(rows, extra)


def _record_evaluations(recorder: RunRecorder, evaluated_round: int, replies: list[Message]) -> None:
    """The `evaluation` records of fused train replies, written as that round's evaluate rows."""
    scores, rejected = evaluations(replies)
    recorder.reject(evaluated_round, "evaluate", rejected)
    for hospital, metrics in scores:
        recorder.write(evaluated_round, hospital, "evaluate", row_of(metrics))
    if scores:
        mean = weighted_nanmean([RecordDict({"metrics": m}) for _, m in scores], "num-examples")
        recorder.aggregate(evaluated_round, "evaluate", dict(mean), None)  # no phase of its own to time
    else:
        recorder.reject(evaluated_round, "evaluate", [Rejection("all", "no hospital returned an evaluation")])


def _secure_phase(
    grid: Grid, config: RunConfig, strategy: Strategy, recorder: RunRecorder,
    server_round: int, arrays: ArrayRecord, sent: ConfigRecord, t0: float,
) -> ArrayRecord:
    """The train phase under SecAgg+: only the hospitals' mean update is ever unmasked."""
    outcome = secure_train(grid, config, strategy, server_round, arrays, sent)
    recorder.reject(server_round, "train", outcome.rejections)
    for hospital, metrics in outcome.hospitals:
        unit = outcome.units.get(hospital)
        recorder.write(server_round, hospital, "train", {**row_of(metrics), **({"privacy_unit": unit} if unit else {})})
    if outcome.arrays is None:  # the reason is among outcome.rejections
        return arrays
    if len(outcome.hospitals) < config.min_replies:
        reason = (f"round skipped: {len(outcome.hospitals)} hospitals completed the secure round, "
                  f"min-replies={config.min_replies}; global model kept")
        recorder.reject(server_round, "train", [Rejection("all", reason)])
        return arrays
    recorder.aggregate(server_round, "train", outcome.metrics and dict(outcome.metrics), time.perf_counter() - t0)
    return outcome.arrays


def _data_spec(grid: Grid, config: RunConfig) -> tuple[TaskData | None, tuple[int, ...], int]:
    """Shape and classes from the data when the server can read it, else from a hospital.

    In deployment the run's data-path is empty (each hospital names its own data in
    node config) or a path the server cannot see.
    """
    if config.data_path:
        try:
            data = load_data(config)
            return data, data.input_shape, data.num_classes
        except DataError:
            if os.path.exists(config.data_path) or config.data_path.startswith("builtin:"):
                raise
    # Every connected hospital is asked and the first answer used: one slow or stuck
    # hospital must not stop the run from starting.
    nodes = _wait_for_hospitals(grid, config, needed=1)
    content = RecordDict({"config": ConfigRecord(config.to_mapping())})
    queries = [Message(content=content, message_type="query", dst_node_id=node) for node in nodes]
    replies = send_and_receive(grid, queries, config.round_timeout, until_first=True)
    good = [r for r in replies if not r.has_error()]
    if not good:
        reasons = "; ".join(r.error.reason for r in replies)
        silent = len(nodes) - len(replies)
        what = ", ".join(part for part in (f"{len(replies)} answered with an error" if replies else "",
                                           f"{silent} did not answer within round-timeout="
                                           f"{config.round_timeout:g} s" if silent else "") if part)
        raise FedwardError(f"could not learn the data shape from any of {len(nodes)} hospitals ({what})"
                           + (f": {reasons}" if reasons else ""))
    spec = next(iter(good[0].content.metric_records.values()))
    shape = tuple(int(d) for d in spec["input-shape"])  # type: ignore[union-attr]
    return None, shape, int(spec["num-classes"])  # type: ignore[arg-type]


def _wait_for_hospitals(grid: Grid, config: RunConfig, needed: int | None = None) -> list[int]:
    """Connected node ids once `min-hospitals` are there; an error after round-timeout."""
    needed = config.min_hospitals if needed is None else needed
    deadline = time.monotonic() + config.round_timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() > deadline:
            raise FedwardError(
                f"only {len(nodes)} of min-hospitals={needed} hospitals connected within "
                f"round-timeout={config.round_timeout:g} s; the run stops here (checkpoints kept)"
            )
        time.sleep(1)

