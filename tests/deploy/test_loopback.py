"""The same app across real processes on loopback: TLS, node authentication, dropouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from client.hospital import hospital_data
from common.config import RunConfig
from common.ledger import PrivacyLedger, history_of
from common.metrics import majority_baseline
from common.privacy import epsilon_spent
from tests.deploy.loopback import BIN, LoopbackFederation, free_port

pytestmark = pytest.mark.slow
HOSPITALS = ("cleveland", "hungarian", "va")


@pytest.fixture
def federation(tmp_path: Path):
    fed = LoopbackFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop_all()


def finish(fed: LoopbackFederation, process: subprocess.Popen, timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("run did not finish in time:\n" + fed.log("run")[-4000:]) from None
    assert process.returncode == 0, fed.log("run")[-4000:]


def test_unregistered_key_and_wrong_ca_are_refused(federation: LoopbackFederation, data_dir: Path, tmp_path: Path):
    federation.make_certs("cleveland", "intruder")
    federation.start_superlink()
    federation.register("cleveland")
    data = data_dir / "heart_disease_uci" / "processed.cleveland.data"

    intruder = federation.start_node("intruder", data, False, "--activation-wait", "0")
    assert intruder.wait(timeout=90) != 0
    assert "Exit Code: 305" in federation.log("node-intruder")  # Failed to activate SuperNode

    other = LoopbackFederation(tmp_path / "other")
    other.make_certs()
    node = federation.start("node-wrong-ca", "supernode", "--superlink", f"127.0.0.1:{federation.port}",
                            "--ca", str(other.certs / "ca.crt"), "--key", str(federation.keys / "cleveland"),
                            "--data", str(data), "--hospital", "cleveland", "--port", str(free_port()),
                            "--max-retries", "1")
    assert node.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.log("node-wrong-ca")
    assert "trying again" not in federation.log("node-wrong-ca"), "a TLS failure is not retried as a stale session"
    assert federation.online_nodes() == 0


def test_plaintext_client_is_refused(federation: LoopbackFederation, data_dir: Path):
    federation.make_certs("cleveland")
    federation.start_superlink()
    federation.register("cleveland")
    base = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{federation.port}",
            "--port", str(free_port()), "--node-config", f'data-path="{data_dir}"']
    # With its key, Flower itself refuses to authenticate over plaintext (exit 303).
    with_key = subprocess.run([*base, "--auth-supernode-private-key", str(federation.keys / "cleveland")],
                              env=federation.env, capture_output=True, text=True, timeout=120)
    assert with_key.returncode != 0 and "Exit Code: 303" in with_key.stdout + with_key.stderr
    # Without a key, the TLS-only SuperLink never lets it in: it keeps failing to connect.
    node = subprocess.Popen(base, env=federation.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        time.sleep(8)  # several connection attempts (Flower retries within seconds)
        assert federation.online_nodes() == 0
    finally:
        os.killpg(node.pid, signal.SIGKILL)
    output = node.communicate(timeout=10)[0]
    assert "Connection attempt failed" in output and "SuperNode ID" not in output, output[-2000:]


def wait_for(path: Path, run: subprocess.Popen, fed: LoopbackFederation, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and run.poll() is None, fed.log("run")[-3000:]
        time.sleep(0.2)


def test_secure_aggregation_then_server_killed_and_resumed_then_a_hospital_killed(
    federation: LoopbackFederation, data_dir: Path, tmp_path: Path,
):
    """Three hospitals over TLS with node authentication, two runs in one federation (its
    set-up is most of the cost).

    1. DP and secure aggregation (SecAgg+) together, as a consortium would run them: every
       hospital trains every round and the global model beats each hospital's majority class.
    2. The plain train path under two faults: round 2 under way, the SuperLink and its
       ServerApp are SIGKILLed, the SuperLink is restarted on its state database and the run
       resumed (resume=true); round 3: a hospital's SuperNode is SIGKILLed and the run
       finishes without it, within round-timeout."""
    federation.make_certs(*HOSPITALS)
    federation.start_superlink()
    ledgers = {name: tmp_path / f"{name}-ledger.sqlite" for name in HOSPITALS}
    for name in HOSPITALS:  # two runs of epsilon 3 each: the per-window cap must allow both
        federation.register(name)
        federation.start_node(name, data_dir / "heart_disease_uci" / f"processed.{name}.data", False,
                              "--ledger", str(ledgers[name]), "--epsilon-budget", "10", "--run-epsilon-cap", "6")
    federation.wait_online(3)

    # 1. DP + SecAgg+
    out = tmp_path / "secure-run"
    run = federation.run(f'data-path="" num-server-rounds=2 epsilon=3.0 min-hospitals=3 secure-aggregation=true '
                         f'round-timeout=300 out-dir="{out}"')
    finish(federation, run, timeout=600)
    log = federation.log("run")  # the streamed ServerApp log may repeat lines
    assert "Secure aggregation completed" in log and "Secure aggregation halted" not in log
    assert "run finished" in log
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["hospitals"]) == set(HOSPITALS)
    for name, info in card["hospitals"].items():
        assert info["rounds_trained"] == [1, 2] and 0 < info["epsilon_spent"] <= 3.01, name
    baselines, sizes = [], []
    for name in HOSPITALS:
        path = data_dir / "heart_disease_uci" / f"processed.{name}.data"
        hospital = hospital_data(RunConfig(), {"data-path": str(path)})
        baselines.append(majority_baseline(hospital.train.y, hospital.test.y))
        sizes.append(len(hospital.test))
    federated = card["final_metrics"]["federated_evaluation"]
    assert federated["accuracy"] > np.average(baselines, weights=sizes) + 0.05
    first_run: dict[str, set[int]] = {}
    for name in HOSPITALS:
        with PrivacyLedger(ledgers[name]) as ledger:
            (line,) = ledger.datasets()
            first_run[name] = {c.id for c in ledger.charges(line.fingerprint)}

    # 2. Server killed in round 2, resumed; a hospital killed in round 3
    out = tmp_path / "run"
    settings = f'data-path="" num-server-rounds=3 epsilon=3.0 min-hospitals=2 round-timeout=20 out-dir="{out}"'
    run = federation.run(settings)
    wait_for(out / "checkpoints" / "round-0001.npz", run, federation)
    time.sleep(1.0)  # round 2 is under way at the hospitals
    federation.stop("superlink")  # the server machine dies: SuperLink and its ServerApp process
    federation.stop("run")
    assert not (out / "model_card.json").exists()

    federation.start_superlink()  # same state database; the SuperNodes reconnect by themselves
    federation.wait_online(3, timeout=180)
    run = federation.run(f"{settings} resume=true")
    wait_for(out / "checkpoints" / "round-0002.npz", run, federation)
    federation.stop("node-va")  # a hospital dies during round 3
    finish(federation, run, timeout=300)
    assert "resuming run" in federation.log("run")

    card = json.loads((out / "model_card.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["round"], r["hospital"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "metrics continued, not duplicated"
    assert {r["round"] for r in rows} == {1, 2, 3}
    assert set(card["hospitals"]) == set(HOSPITALS), "a lost node's error reply is named after its hospital"
    trained = {name: card["hospitals"][name]["rounds_trained"] for name in HOSPITALS}
    # every hospital rejoins after the SuperLink restart (none is left a reply behind,
    # client/fast_supernode.py); va trains until it is killed in round 3
    assert trained == {"cleveland": [1, 2, 3], "hungarian": [1, 2, 3], "va": [1, 2]}, trained
    assert 3 in card["hospitals"]["va"]["rounds_missed"]
    for name in HOSPITALS:
        with PrivacyLedger(ledgers[name]) as ledger:
            (line,) = ledger.datasets()
            this_run = [c for c in ledger.charges(line.fingerprint) if c.id not in first_run[name]]
            charged = [c.round for c in this_run]
            assert charged == sorted(set(charged)) and set(trained[name]) <= set(charged), (name, charged)
            if charged[-1] == trained[name][-1]:  # the card's last epsilon is this run's ledger total
                assert epsilon_spent(history_of(this_run), line.delta) == pytest.approx(
                    card["hospitals"][name]["epsilon_spent"], abs=1e-9)
