"""Secure aggregation (SecAgg+): the server learns the mean update and nothing finer.

The real round loop, Flower's SecAggPlusWorkflow, Flower's secaggplus_mod and the
real ClientApp run in this process over tests.inprocess_grid. Four heart-disease
hospitals, DP on, one round: the virtual hospitals ask for reproducible noise (as
`fedward simulate` does), so the plain and the secure run start from the same model
and the hospitals compute the same updates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

import client.app
import client.secure
from client.app import app
from common.config import RunConfig
from common.errors import ConfigError, FedwardError
from common.ledger import PrivacyLedger
from common.serialization import ARRAY_KEYS
from server.federation import run_federation
from server.secure_round import error_bound
from tests.client.test_client_app import initial
from tests.inprocess_grid import WireTap

HOSPITALS = 4


def received_arrays(replies: list[Message]) -> list[np.ndarray]:
    """Every array in the replies: ArrayRecords, and bytes in ConfigRecords that decode as arrays."""
    found = []
    for msg in replies:
        if msg.has_error():
            continue
        for record in msg.content.array_records.values():
            found += [a.numpy() for a in record.values()]
        for record in msg.content.config_records.values():
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, bytes):
                        try:
                            found.append(bytes_to_ndarray(item))
                        except Exception:
                            pass  # keys, ciphertexts and shares are not arrays
    return found


def run(tmp_path: Path, data_dir: Path, secure: bool, faults=None, **settings):  # type: ignore[no-untyped-def]
    # the MLP: weight matrices large enough for a correlation to mean something
    config = RunConfig(data_path=str(data_dir / "heart_disease_uci"), model="mlp", partition="iid",
                       min_hospitals=HOSPITALS, secure_aggregation=secure, out_dir=str(tmp_path),
                       # a SecAgg+ run releases no class histogram (common/class_prior.py): without it in the
                       # plain run too, both calibrate the same DP-SGD noise and their means can be compared
                       balanced_decision=False, **{"num_server_rounds": 1, **settings})
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS, "reproducible-noise": True} for i in range(HOSPITALS)]
    grid = WireTap(app, nodes, faults)
    run_federation(grid, config)
    card = json.loads((tmp_path / "model_card.json").read_text())
    return grid, card, torch.load(tmp_path / "final_model.pt")


def train_sizes(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["num_examples"] for r in rows if r["split"] == "train" and r["hospital"] not in ("all", "server")]


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_secure_mean_equals_fedavg_and_no_update_reaches_the_server(data_dir: Path, tmp_path: Path, monkeypatch):
    updates: list[np.ndarray] = []  # what each hospital hands the SecAgg+ mod before masking
    original = client.secure.ndarrays_to_parameters
    monkeypatch.setattr(client.secure, "ndarrays_to_parameters",
                        lambda arrays: (updates.extend(arrays), original(arrays))[1])

    plain_grid, plain_card, plain_model = run(tmp_path / "plain", data_dir, secure=False)
    secure_grid, secure_card, secure_model = run(tmp_path / "secure", data_dir, secure=True)

    # The aggregate: plain FedAvg up to SecAgg+'s quantisation, within its stated bound.
    sizes = train_sizes(tmp_path / "secure")
    assert len(sizes) == HOSPITALS and sizes == train_sizes(tmp_path / "plain")
    bound = error_bound(sizes, max(sizes)) + 1e-6  # + float32 rounding of the weights
    difference = max_difference(secure_model, plain_model)
    print(f"secure vs plain FedAvg: max |difference| {difference:.2e}, bound {bound:.2e}")
    assert difference <= bound
    assert not secure_card["rejected_replies"]
    # What each hospital's epsilon protects is named as in a plain run (it read 'unknown' under SecAgg+).
    assert secure_card["differential_privacy"]["privacy_unit"] == plain_card["differential_privacy"]["privacy_unit"]
    assert plain_card["differential_privacy"]["privacy_unit"].startswith(("record", "patient"))

    # The server never held one hospital's update: no array it received correlates with one.
    def best_match(replies: list[Message], secrets: list[np.ndarray]) -> float:
        secrets = [s.ravel().astype(np.float64) for s in secrets if s.size >= 100]
        assert len(secrets) >= HOSPITALS
        scores = []
        for received in received_arrays(replies):
            for secret in secrets:
                if received.size == secret.size and np.std(received) > 0:
                    scores.append(abs(float(np.corrcoef(received.ravel().astype(np.float64), secret)[0, 1])))
        assert len(scores) >= HOSPITALS**2, "every hospital's reply was compared with every update"
        return max(scores)

    secure_train_replies = [m for m in secure_grid.received if m.metadata.message_type == "train"]
    assert all(len(r) == 0 for m in secure_train_replies if not m.has_error()
               for r in m.content.array_records.values()), "no weights in any secure train reply"
    assert best_match(secure_grid.received, updates) < 0.5  # chance level: about 1/sqrt(size)
    # The same check finds the hospitals' weights on the wire of a plain run: it can fail.
    plain_weights = [a.numpy() for m in plain_grid.received if m.metadata.message_type == "train"
                     for a in m.content["arrays"].values()]
    assert best_match(plain_grid.received, plain_weights) > 0.99


@pytest.mark.slow
def test_server_momentum_under_secure_aggregation_applies_fedavgm_to_the_true_mean(
        data_dir: Path, tmp_path: Path, monkeypatch):
    """FedAvgM (image-cnn's no-DP default) on the masked sum: 2 rounds, so the second carries momentum.

    The reference is FedAvgM (server lr 1) computed from the very updates the hospitals of this run
    handed SecAgg+, not a second, plain run: that run's round 2 would start from a model that differs
    by round 1's random quantisation, and local training can amplify it past any quantisation bound.
    """
    handed: list[tuple[list[np.ndarray], list[np.ndarray], int]] = []  # (global weights, update, examples)
    real_masked_reply = client.app.masked_reply

    def recording(msg: Message, train, context: Context) -> Message:  # type: ignore[no-untyped-def]
        reply = real_masked_reply(msg, train, context)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        handed.append((parameters_to_ndarrays(fitins.parameters), parameters_to_ndarrays(fitres.parameters),
                       fitres.num_examples))
        return reply

    monkeypatch.setattr(client.app, "masked_reply", recording)
    momentum = 0.5
    _, card, secure = run(tmp_path, data_dir, secure=True, dp=False, num_server_rounds=2, server_momentum=momentum)
    assert card["server_momentum"] == momentum and not card["rejected_replies"]
    assert len(handed) == 2 * HOSPITALS, "every hospital answered both rounds"
    rounds = [handed[:HOSPITALS], handed[HOSPITALS:]]

    def exact_mean(replies: list[tuple[list[np.ndarray], list[np.ndarray], int]]) -> list[np.ndarray]:
        total = sum(n for _, _, n in replies)
        return [sum(n * u[i] for _, u, n in replies) / total for i in range(len(replies[0][1]))]

    u1, u2 = exact_mean(rounds[0]), exact_mean(rounds[1])
    w0, w1 = rounds[0][0][0], rounds[1][0][0]  # the global weights each round was sent
    assert all(np.array_equal(a, b) for g, _, _ in rounds[1] for a, b in zip(g, w1, strict=True)), \
        "round 2 sent one global model to all"
    # FedAvgM: pseudo-gradient g = w - mean; v = momentum * v + g; w -= v. Round 1 (v = g) is FedAvg.
    expected_w2 = [w + b + momentum * a for w, a, b in zip(w1, u1, u2, strict=True)]
    without_momentum = [w + b for w, b in zip(w1, u2, strict=True)]
    final = [t.double().numpy() for t in secure.values()]
    assert [a.shape for a in final] == [a.shape for a in expected_w2]

    def largest(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))

    b = error_bound([n for _, _, n in rounds[0]], max(n for _, _, n in rounds[0]))
    b2 = error_bound([n for _, _, n in rounds[1]], max(n for _, _, n in rounds[1]))
    assert largest(w1, [w + a for w, a in zip(w0, u1, strict=True)]) <= b + 1e-6  # round 1: the secure mean
    # round 2: its own quantisation plus round 1's, carried by the momentum; + float32 rounding
    assert largest(final, expected_w2) <= b2 + momentum * b + 1e-6
    assert largest(expected_w2, without_momentum) > 100 * (b2 + b)  # the momentum did move it


def dies_before_sending_its_masked_update(msg: Message, reply: Message) -> Message:
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get("stage")
    if stage == "collect_masked_vectors":
        return Message(Error(code=0, reason="SuperNode lost"), reply_to=msg)
    return reply


def dies_in_training(msg: Message, reply: Message) -> Message:
    if msg.metadata.message_type == "train":
        return Message(Error(code=0, reason="SuperNode lost"), reply_to=msg)
    return reply


@pytest.mark.slow
def test_a_hospital_that_drops_out_mid_protocol_is_unmasked_out(data_dir: Path, tmp_path: Path):
    """Hospital 3 takes part in the key exchange, then dies: the round completes with the
    other three, and their mean is what plain FedAvg of those three gives."""
    _, card, secure_model = run(tmp_path / "secure", data_dir, secure=True, faults={3: dies_before_sending_its_masked_update})
    _, _, plain_model = run(tmp_path / "plain", data_dir, secure=False, faults={3: dies_in_training})
    reasons = [(r["hospital"], r["reason"]) for r in card["rejected_replies"]]
    assert reasons == [("hospital-3", "left the secure round: SuperNode lost")]
    sizes = train_sizes(tmp_path / "secure")
    assert len(sizes) == HOSPITALS - 1
    assert max_difference(secure_model, plain_model) <= error_bound(sizes, max(sizes)) + 1e-6


def test_secure_aggregation_refuses_strategies_that_need_single_updates():
    for strategy in ("krum", "fedmedian", "fedtrimmedavg"):
        with pytest.raises(ConfigError, match=f"secure-aggregation=true cannot go with strategy={strategy}"):
            RunConfig(secure_aggregation=True, strategy=strategy).validate()


def test_a_hospital_out_of_budget_refuses_a_secure_round_and_the_others_go_on(tmp_path: Path):
    """Under SecAgg+ a refusal looks like a dropout to the protocol; the card still says why."""
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    nodes[2].update({"privacy-ledger": str(tmp_path / "ledger.sqlite"), "epsilon-budget": 0.5})
    config = RunConfig(num_server_rounds=1, epsilon=3.0, min_hospitals=3, secure_aggregation=True,
                       out_dir=str(tmp_path / "run"))
    run_federation(WireTap(app, nodes), config)
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    refused = card["hospitals"]["hospital-2"]["rounds_refused"]
    assert [r["round"] for r in refused] == [1] and refused[0]["reason"].startswith("refused: budget")
    assert card["hospitals"]["hospital-0"]["rounds_trained"] == [1]
    assert card["hospitals"]["hospital-1"]["rounds_trained"] == [1]
    assert not card["rounds_skipped"] and card["secure_aggregation"]["enabled"]
    assert not any("spent" in str(r) for r in refused), "the refusal says budget, not how much was spent"


class LyingServer(WireTap):
    """Lists one answering hospital as dropped too in the unmask request to hospital 0."""

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        for msg in messages:
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.UNMASK and msg.metadata.dst_node_id == 100:
                configs[Key.DEAD_NODE_ID_LIST] = [*configs[Key.DEAD_NODE_ID_LIST], configs[Key.ACTIVE_NODE_ID_LIST][-1]]
        return super().push_messages(messages)


def test_a_hospital_sends_no_key_shares_when_a_node_is_listed_active_and_dropped(tmp_path: Path):
    """Flower's client unmask does not check the lists; with a node in both, the server gets both
    of its secrets and can unmask its single update. fedward's wrapper refuses."""
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    config = RunConfig(num_server_rounds=1, min_hospitals=3, secure_aggregation=True, out_dir=str(tmp_path / "run"))
    grid = LyingServer(app, nodes)
    run_federation(grid, config)
    unmask_replies = [m for m in grid.received if m.metadata.src_node_id == 100 and m.metadata.message_type == "train"][-1:]
    (reply,) = unmask_replies
    assert reply.has_error() and "both active and dropped" in reply.error.reason
    honest = [m for m in grid.received if m.metadata.src_node_id == 101 and not m.has_error()
              and m.metadata.message_type == "train"]
    assert honest and Key.SHARE_LIST in honest[-1].content.config_records[RECORD_KEY_CONFIGS], "the others unmask"


def test_a_hospital_requiring_secure_aggregation_refuses_plain_train_messages(tmp_path: Path):
    nodes = [{"partition-id": i, "num-partitions": 3, "require-secure-aggregation": True} for i in range(3)]
    plain = RunConfig(num_server_rounds=1, min_hospitals=3, out_dir=str(tmp_path / "plain"))
    grid = WireTap(app, nodes)
    with pytest.raises(FedwardError, match="no round of the run had a usable update"):
        run_federation(grid, plain)
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert train and all(dict(m.content["refusal"]) == {"reason": "secure-aggregation-required"} for m in train)
    assert all("arrays" not in m.content for m in train), "no plain update left any hospital"
    secure = WireTap(app, nodes)
    run_federation(secure, plain.replace(secure_aggregation=True, out_dir=str(tmp_path / "secure")))
    card = json.loads((tmp_path / "secure" / "model_card.json").read_text())
    assert all(h["rounds_trained"] == [1] for h in card["hospitals"].values())


def test_a_plain_message_dressed_as_the_masked_stage_gets_no_update(tmp_path: Path):
    """The masked stage's reply is the update itself (the mod masks it): only the mod may ask for it."""
    config = RunConfig(num_server_rounds=1, epsilon=2.0)
    arrays = initial(config, (30,), 2)
    fitins = compat.fitins_to_recorddict(FitIns(
        ndarrays_to_parameters([a.numpy() for a in arrays.values()]),
        {**config.to_mapping(), "server-round": 1, ARRAY_KEYS: "\n".join(arrays.keys())}), keep_input=False)
    metadata = Metadata(run_id=1, message_id="x", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    reply = app(Message(content=fitins, metadata=metadata), context)
    assert reply.has_error() or not any(len(r) for r in reply.content.array_records.values())


def test_a_replayed_secure_round_is_trained_and_charged_again(tmp_path: Path, monkeypatch):
    """Re-sending a masked update to another subset would let the server subtract sums: a secure
    round asked for again is a new release, charged (a plain replay is free, tests/client)."""
    import server.run_state

    monkeypatch.setattr(server.run_state.uuid, "uuid4", lambda: type("U", (), {"hex": "same-run"})())
    ledger = tmp_path / "ledger.sqlite"
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    nodes[0]["privacy-ledger"] = str(ledger)
    # the second time the run's epsilon is raised, so the run's own target does not refuse the
    # replay (which it would otherwise: a charged replay passes a target calibrated for one round)
    for attempt, epsilon in (("first", 2.0), ("again", 4.0)):
        config = RunConfig(num_server_rounds=1, epsilon=epsilon, min_hospitals=3, secure_aggregation=True,
                           out_dir=str(tmp_path / attempt))
        run_federation(WireTap(app, nodes), config)
    with PrivacyLedger(ledger) as db:
        charges = db.charges("hospital-0")
    assert [(c.run_id, c.round) for c in charges] == [("same-run", 1), ("same-run", 1)]
    assert charges[0].update_digest != charges[1].update_digest, "a fresh update, with fresh noise"
    assert not (tmp_path / "ledger.sqlite.sent").exists() or not any((tmp_path / "ledger.sqlite.sent").rglob("*.npz")), \
        "no masked round is kept to be sent again"
