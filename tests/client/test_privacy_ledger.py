"""The hospital's privacy ledger seen through the ClientApp, as Flower calls it."""

import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from opacus.accountants import RDPAccountant

from client.app import app
from common.config import RunConfig
from common.ledger import ABANDONED, PrivacyLedger
from common.privacy import epsilon_spent
from common.tasks import resolve
from common.training import batches_per_epoch
from fedward.cli import main
from fedward.ledger_view import summary
from tests.client.test_client_app import initial
from tests.conftest import PROJECT_ROOT

SHAPE = (30,)  # builtin breast-cancer: 30 features, 2 classes


def train_message(
    arrays: ArrayRecord, config: RunConfig, server_round: int, run_id: str, extra=None, flwr_run: int = 1,
) -> Message:
    """A train message as a SuperNode receives it; `flwr_run` is Flower's run id (the metadata)."""
    record = ConfigRecord({**config.to_mapping(), "server-round": server_round, "fedward-run-id": run_id, **(extra or {})})
    metadata = Metadata(
        run_id=flwr_run, message_id=f"{run_id}-{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        group_id=str(server_round), created_at=time.time(), ttl=600, message_type="train",
    )
    return Message(content=RecordDict({"arrays": arrays, "config": record}), metadata=metadata)


def hospital(ledger: Path, **settings) -> Context:
    """A fresh node context, as after a SuperNode restart: only the ledger remembers."""
    node = {"partition-id": 0, "num-partitions": 2, "privacy-ledger": str(ledger), **settings}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def run(ledger: Path, config: RunConfig, run_id: str, **settings) -> list[Message]:
    arrays, replies = initial(config, SHAPE, 2), []
    flwr_run = zlib.crc32(run_id.encode())  # each run its own Flower run, as `flwr run` starts one
    for server_round in range(1, config.num_server_rounds + 1):
        reply = app(train_message(arrays, config, server_round, run_id, flwr_run=flwr_run), hospital(ledger, **settings))
        assert not reply.has_error(), reply.error
        replies.append(reply)
        if "arrays" in reply.content:
            arrays = reply.content["arrays"]
    return replies


def test_three_runs_compose_like_one_accountant_and_a_fourth_past_the_budget_is_refused(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    runs = {"run-a": RunConfig(balanced_decision=False, num_server_rounds=2, epsilon=1.0),
            "run-b": RunConfig(balanced_decision=False, num_server_rounds=3, epsilon=0.5, batch_size=16),
            "run-c": RunConfig(balanced_decision=False, num_server_rounds=1, epsilon=1.5)}
    history = []
    for run_id, config in runs.items():
        for reply in run(ledger, config, run_id, **{"epsilon-budget": 4.0}):
            metrics = reply.content["metrics"]
            q = 1 / batches_per_epoch(int(metrics["num-examples"]), resolve(config).batch_size)
            history.append((metrics["noise-multiplier"], q, metrics["steps"]))
        assert metrics["epsilon"] <= config.epsilon + 1e-2, "each run's own epsilon stays within its target"
    reference = RDPAccountant()
    reference.history = history
    line = summary(ledger)[0]
    assert line["spent"] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-6)
    assert [r["run_id"] for r in line["runs"]] == list(runs)
    assert line["remaining"] == pytest.approx(4.0 - line["spent"])

    refused = run(ledger, RunConfig(balanced_decision=False, num_server_rounds=1, epsilon=4.0), "run-d", **{"epsilon-budget": 4.0})[0]
    assert "arrays" not in refused.content, "no update left the hospital"
    assert dict(refused.content["refusal"]) == {"reason": "budget"}, "the server learns the reason, nothing more"
    assert summary(ledger)[0]["spent"] == line["spent"], "the refused round was not charged"


def test_a_resumed_round_replays_its_update_without_a_second_charge(tmp_path: Path):
    """With secret noise a retrained round would differ and spend again: the hospital keeps
    what it sent (npz + JSON beside its ledger) and sends exactly that on a replay."""
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(balanced_decision=False, num_server_rounds=2, epsilon=2.0)
    arrays = initial(config, SHAPE, 2)
    first = app(train_message(arrays, config, 1, "run-r"), hospital(ledger))
    kept = sorted(p.name for p in (tmp_path / "ledger.sqlite.sent").rglob("round-*") if p.suffix != ".lock")
    assert kept == ["round-000001.json", "round-000001.npz"], "a data format, never a pickle"
    # the server died before aggregating round 1; its resumed run (a new Flower run) asks again
    again = app(train_message(arrays, config, 1, "run-r", flwr_run=2), hospital(ledger))
    assert [a.numpy().tobytes() for a in first.content["arrays"].values()] == \
        [a.numpy().tobytes() for a in again.content["arrays"].values()], "the same update, not a retrained one"
    assert dict(again.content["metrics"]) == dict(first.content["metrics"])
    with PrivacyLedger(ledger) as db:
        assert len(db.charges("hospital-0")) == 1
    # another global model for a round already sent gets what was sent: nothing new leaves
    other = app(train_message(first.content["arrays"], config, 1, "run-r", flwr_run=2), hospital(ledger))
    assert [a.numpy().tobytes() for a in other.content["arrays"].values()] == \
        [a.numpy().tobytes() for a in first.content["arrays"].values()]
    # the next round is trained and charged, within the same run's account
    second = app(train_message(first.content["arrays"], config, 2, "run-r", flwr_run=2), hospital(ledger))
    assert second.content["metrics"]["noise-multiplier"] == first.content["metrics"]["noise-multiplier"]
    with PrivacyLedger(ledger) as db:
        assert [c.round for c in db.charges("hospital-0")] == [1, 2]
        assert all(c.update_digest for c in db.charges("hospital-0")), "the digest of what left is on record"


ATTEMPT = RunConfig(balanced_decision=False, num_server_rounds=2, epsilon=2.0)


def _attempts(ledger: Path, modes: str) -> subprocess.Popen:
    """tests/client/attempt_worker.py: attempts at round 1 of run-k that fail, die or hold; none sends."""
    ledger.parent.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tests.client.attempt_worker", str(ledger), modes],
                            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _charges(ledger: Path) -> list:
    with PrivacyLedger(ledger) as db:
        return db.charges("hospital-0")


def test_a_round_killed_while_training_is_trained_again_under_its_own_reservation(tmp_path: Path):
    """Killed after its reservation and before sending (a resumed run's round in flight): nothing left the
    hospital, so the round asked for again trains under that reservation, where a second charge would have
    cost the hospital its last round. Not so for a round whose training failed with an error (whether it
    fails may depend on the data, and the server sees it), for a second death of the same round, or while
    the first attempt lives: each of those is charged anew."""
    arrays = initial(ATTEMPT, SHAPE, 2)
    step = lambda c: (c.noise, c.sample_rate, c.steps)  # noqa: E731
    # an error, then a kill: the error's charge stays spent, the killed one is trained under again
    ledger = tmp_path / "failed-then-killed" / "ledger.sqlite"
    assert _attempts(ledger, "fail,die").wait(timeout=120) == -signal.SIGKILL
    failed, killed = _charges(ledger)
    assert failed.update_digest == ABANDONED and killed.update_digest is None, "nothing sent under either"
    again = app(train_message(arrays, ATTEMPT, 1, "run-k", flwr_run=2), hospital(ledger))
    assert not again.has_error() and "arrays" in again.content
    assert [(c.id, c.update_digest not in (None, ABANDONED)) for c in _charges(ledger)] == \
        [(failed.id, False), (killed.id, True)], "the killed attempt's reservation, now settled; no third"
    assert again.content["metrics"]["epsilon"] == pytest.approx(
        epsilon_spent([step(failed), step(killed)], 1e-5), abs=1e-9), "two reservations' epsilon, not three"

    # killed twice: the second death is charged anew
    ledger = tmp_path / "killed-twice" / "ledger.sqlite"
    for _ in range(2):
        assert _attempts(ledger, "die").wait(timeout=120) == -signal.SIGKILL
    app(train_message(arrays, ATTEMPT, 1, "run-k", flwr_run=2), hospital(ledger))
    assert len(_charges(ledger)) == 2

    # a live attempt may still send: a second attempt meanwhile is charged on its own
    ledger = tmp_path / "live" / "ledger.sqlite"
    holder = _attempts(ledger, "hold")
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{ledger}.training").exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the attempt never reserved its round"
            time.sleep(0.05)
        second = app(train_message(arrays, ATTEMPT, 1, "run-k", flwr_run=2), hospital(ledger))
    finally:
        Path(f"{ledger}.go").touch()
        assert holder.wait(timeout=60) == 0, "the first attempt sent nothing"
    assert "arrays" in second.content and len(_charges(ledger)) == 2


def test_a_replay_whose_kept_copy_was_damaged_is_retrained_and_charged(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(balanced_decision=False, num_server_rounds=2, epsilon=2.0)
    arrays = initial(config, SHAPE, 2)
    app(train_message(arrays, config, 1, "run-r"), hospital(ledger))
    (npz,) = (tmp_path / "ledger.sqlite.sent").rglob("*.npz")
    npz.write_bytes(npz.read_bytes()[:-40])
    reply = app(train_message(arrays, config, 1, "run-r"), hospital(ledger))
    assert not reply.has_error() and "arrays" in reply.content
    with PrivacyLedger(ledger) as db:
        assert len(db.charges("hospital-0")) == 2, "never under-counted: a fresh release is a fresh charge"


def test_the_server_cannot_set_or_bypass_a_hospitals_budget(tmp_path: Path):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(balanced_decision=False, num_server_rounds=1, epsilon=2.0)
    arrays = initial(config, SHAPE, 2)
    for key, value in (("epsilon-budget", 1000.0), ("privacy-ledger", "/tmp/fresh.sqlite"),
                       ("reproducible-noise", True), ("allow-no-dp", True)):
        reply = app(train_message(arrays, config, 1, "run-x", {key: value}), hospital(ledger, **{"epsilon-budget": 1.0}))
        assert reply.has_error() and f"unknown setting '{key}'" in reply.error.reason, "a run cannot set it"
    # a huge delta in the run config does not buy epsilon: the hospital's delta is used
    greedy = app(train_message(arrays, RunConfig(balanced_decision=False, num_server_rounds=1, epsilon=2.0, delta=0.5), 1, "run-y"),
                 hospital(ledger, **{"epsilon-budget": 1.0}))
    assert greedy.content["refusal"]["reason"] == "budget"
    # and a run without DP is refused by a hospital that keeps a ledger
    plain = app(train_message(arrays, config.replace(dp=False), 1, "run-z"), hospital(ledger))
    assert plain.content["refusal"]["reason"] == "dp-required" and "arrays" not in plain.content
    assert not PrivacyLedger(ledger).datasets() or summary(ledger)[0]["spent"] == 0


@pytest.mark.parametrize("settings, message", [
    ({"epsilon-budget": 0}, "epsilon-budget=0 must be > 0"),
    ({"epsilon-budget": -2}, "epsilon-budget=-2 must be > 0"),
    ({"delta": 0.01}, "delta=0.01 is not below 1/n"),
    ({"delta": "small"}, "delta='small' must be a number"),
])
def test_bad_privacy_settings_stop_before_training(tmp_path: Path, settings, message, capfd):
    ledger = tmp_path / "ledger.sqlite"
    config = RunConfig(balanced_decision=False, num_server_rounds=1)
    reply = app(train_message(initial(config, SHAPE, 2), config, 1, "run"), hospital(ledger, **settings))
    assert reply.has_error() and "hospital-config" in reply.error.reason  # the server learns only that
    assert re.search(message, capfd.readouterr().err), "the hospital's log says what to fix"
    assert not ledger.exists() or not PrivacyLedger(ledger).datasets(), "nothing was recorded"


def test_a_ledger_file_that_is_not_a_ledger_stops_training(tmp_path: Path, capfd):
    bogus = tmp_path / "ledger.sqlite"
    bogus.write_bytes(b"\x00not sqlite" * 50)
    config = RunConfig(balanced_decision=False, num_server_rounds=1)
    reply = app(train_message(initial(config, SHAPE, 2), config, 1, "run"), hospital(bogus))
    assert reply.has_error() and str(bogus) not in reply.error.reason
    assert f"privacy-ledger={bogus} is not a fedward privacy ledger" in capfd.readouterr().err
    assert bogus.read_bytes().startswith(b"\x00not sqlite")


def deployed(data: Path, **settings) -> Context:
    """A real hospital's node: its own data path, nothing else unless given."""
    return Context(run_id=1, node_id=7, node_config={"data-path": str(data), **settings}, state=RecordDict(),
                   run_config={})


def test_editing_adding_or_reordering_rows_keeps_spending_on_the_same_line(data_dir: Path, tmp_path: Path, capsys):
    """Issue 16.3: the budget line is the data source the hospital names, not the file's content."""
    data = tmp_path / "processed.va.data"
    rows = (data_dir / "heart_disease_uci" / "processed.va.data").read_text().splitlines()
    config = RunConfig(balanced_decision=False, num_server_rounds=1, epsilon=1.0)
    settings = {"hospital": "va", "privacy-ledger": str(tmp_path / "ledger.sqlite"),
                "run-epsilon-cap": 10, "run-cap-window-hours": 0}
    edited = rows.copy()
    edited[0] = ",".join(["64", *edited[0].split(",")[1:]])  # one patient's age changed
    versions = {"original": rows, "one row edited": edited, "rows added": edited + edited[:5],
                "rows reordered": list(reversed(edited + edited[:5]))}
    arrays = initial(config, (10,), 2)
    # a budget for three such studies and not four (they compose to less than 3 x epsilon 1)
    data.write_text("\n".join(rows) + "\n")
    probe = app(train_message(arrays, config, 1, "probe", flwr_run=99), deployed(data, **{**settings,
                "privacy-ledger": str(tmp_path / "probe.sqlite")}))
    metrics = probe.content["metrics"]
    step = (metrics["noise-multiplier"], 1 / batches_per_epoch(int(metrics["num-examples"]), resolve(config).batch_size),
            int(metrics["steps"]))
    budget = round((epsilon_spent([step] * 3, 1e-5) + epsilon_spent([step] * 4, 1e-5)) / 2, 3)
    replies = {}
    for study, (what, lines) in enumerate(versions.items()):
        data.write_text("\n".join(lines) + "\n")
        replies[what] = app(train_message(arrays, config, 1, f"study-{study}", flwr_run=100 + study),
                            deployed(data, **settings, **{"epsilon-budget": budget}))
        assert not replies[what].has_error(), (what, replies[what].error)
    assert [("refusal" in r.content) for r in replies.values()] == [False, False, False, True], \
        "three studies fit the budget, the fourth does not, whatever was edited"
    assert f"budget {budget:g}" in capsys.readouterr().out, "the hospital's log says which limit refused it"
    (line,) = summary(tmp_path / "ledger.sqlite")
    assert line["dataset"] == "va" and len(line["versions"]) == 3, "one line; each changed file a version of it"
    assert line["spent"] <= budget and [v["rounds"] for v in line["versions"]] == [1, 1, 1]
    assert main(["ledger", "show", "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    assert "data versions: 3" in capsys.readouterr().out


def test_a_hospital_with_only_a_data_path_trains_only_with_dp_and_within_its_cap(
        data_dir: Path, tmp_path: Path, fedward_home: Path, capsys):
    """Issue 17.5: DP, a ledger, a budget and a per-run cap by default; the server cannot switch them off."""
    data = data_dir / "heart_disease_uci" / "processed.cleveland.data"
    arrays = initial(RunConfig(), (10,), 2)
    plain = app(train_message(arrays, RunConfig(dp=False), 1, "plain"), deployed(data))
    assert dict(plain.content["refusal"]) == {"reason": "dp-required"} and "arrays" not in plain.content
    greedy = app(train_message(arrays, RunConfig(epsilon=5.0), 1, "greedy", flwr_run=2), deployed(data))
    assert dict(greedy.content["refusal"]) == {"reason": "budget"} and "arrays" not in greedy.content
    assert "above this hospital's run-epsilon-cap 3" in capsys.readouterr().out
    ok = app(train_message(arrays, RunConfig(epsilon=2.0), 1, "fine", flwr_run=3), deployed(data))
    assert "arrays" in ok.content and 0 < ok.content["metrics"]["epsilon"] <= 2.0
    announced = capsys.readouterr().out
    assert "DP required" in announced and "epsilon-budget 10 (default)" in announced
    (line,) = summary(fedward_home / "privacy-ledger.sqlite")  # the default ledger
    assert line["dataset"] == "processed.cleveland" and line["budget"] == 10 and line["delta"] == 1e-5
    # only the hospital's own node config lets a run go without DP
    allowed = app(train_message(arrays, RunConfig(dp=False), 1, "plain", flwr_run=4),
                  deployed(data, **{"allow-no-dp": True}))
    assert "arrays" in allowed.content and "refusal" not in allowed.content


def test_a_real_hospital_refuses_reproducible_noise(data_dir: Path, capfd):
    data = data_dir / "heart_disease_uci" / "processed.cleveland.data"
    reply = app(train_message(initial(RunConfig(), (10,), 2), RunConfig(), 1, "r"),
                deployed(data, **{"reproducible-noise": True}))
    assert reply.has_error(), "nothing trained, nothing sent"
    assert "reproducible-noise=true is for simulation only" in capfd.readouterr().err
