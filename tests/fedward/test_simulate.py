"""Whole federations on one machine, as a researcher runs them (`fedward simulate`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from client.hospital import hospital_data
from common.class_prior import histogram_entry
from common.config import RunConfig
from common.ledger import PrivacyLedger
from common.metrics import majority_baseline
from common.training import batches_per_epoch
from tests.conftest import PROJECT_ROOT, assert_run_directory, read_metrics

pytestmark = pytest.mark.slow


def simulate(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "RAY_DISABLE_IMPORT_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "fedward", "simulate", *args], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("dp", [True, False], ids=["dp-secure-aggregation", "no-dp"])
def test_heart_disease_natural_split_beats_majority_at_every_hospital(data_dir: Path, tmp_path: Path, dp: bool):
    """With DP the run also uses SecAgg+, as a consortium would run it (the server
    sees only the masked sum of updates); the plain DP path runs in `three_rounds`."""
    heart = data_dir / "heart_disease_uci"
    out = tmp_path / "run"
    result = simulate("--data", str(heart), "--hospitals", "4", "--partition", "natural", "--rounds", "3",
                      "--epsilon", "3", "--out", str(out), *(["--secure-aggregation"] if dp else ["--no-dp"]))
    log = result.stdout + result.stderr
    assert log.count("Secure aggregation completed") == (3 if dp else 0)
    assert "federated (hospitals' held-out splits): balanced accuracy" in result.stdout, "the summary leads with it"
    hospital_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("cleveland "))
    assert ("epsilon spent" in hospital_line) == dp and ("no DP" in hospital_line) != dp, hospital_line
    train_lines = [line for line in result.stdout.splitlines() if "| cleveland" in line and "| train" in line]
    assert len(train_lines) == 3 and all(("no DP" in line) != dp and ("epsilon" in line) == dp for line in train_lines)
    card = assert_run_directory(out, rounds=3)
    assert set(card["hospitals"]) == {"cleveland", "hungarian", "switzerland", "va"}
    config = RunConfig(data_path=str(heart), partition="natural")
    gains = []
    for index in range(4):
        hospital = hospital_data(config, {"partition-id": index, "num-partitions": 4})
        baseline = majority_baseline(hospital.train.y, hospital.test.y)
        scores = card["hospitals"][hospital.name]["final_test_metrics"]
        accuracy = scores["accuracy"]
        assert scores["majority_baseline"] == pytest.approx(np.bincount(hospital.test.y).max() / len(hospital.test))
        # Switzerland's held-out patients all have the disease: 1.0 can only be matched. Elsewhere the
        # model must tell the classes apart (always answering the common class scores 0.5 balanced),
        # and its accuracy may fall short of the majority class by at most one held-out patient.
        if len(np.unique(hospital.test.y)) > 1:
            assert scores["balanced_accuracy"] > 0.5, (hospital.name, scores)
        assert accuracy >= baseline - 1 / len(hospital.test) - 1e-9, (hospital.name, accuracy, baseline)
        gains.append(accuracy - baseline)
    assert np.mean(gains) > 0.05, gains
    if dp:
        assert all(0 < h["epsilon_spent"] <= 3.0 + 1e-2 for h in card["hospitals"].values())


THREE_ROUNDS = ("--hospitals", "2", "--rounds", "3", "--epsilon", "1", "--strategy", "fedadam")


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 3-round FedAdam run with DP, the reference for the next tests."""
    out = tmp_path_factory.mktemp("reference") / "run"
    simulate(*THREE_ROUNDS, "--out", str(out))
    return out


def released(run_dir: Path) -> dict[str, bool]:
    """Per ledger line (hospital): whether it released its class histogram (round -1, common/class_prior.py;
    a hospital releases only where that raises its DP-SGD noise by <= 5%, so not at epsilon 1 on small data)."""
    with PrivacyLedger(run_dir / "ledgers" / "privacy-ledger.sqlite") as ledger:
        return {line.name: any(c.round == -1 for c in ledger.charges(line.name)) for line in ledger.datasets()}


def test_cumulative_epsilon_equals_one_accountant_over_all_steps(three_rounds: Path):
    rows = [r for r in read_metrics(three_rounds) if r["split"] == "train" and r["hospital"] != "all"]
    releases = released(three_rounds)
    for hospital in {r["hospital"] for r in rows}:
        mine = sorted((r for r in rows if r["hospital"] == hospital), key=lambda r: r["round"])
        assert len(mine) == 3
        q = 1 / batches_per_epoch(mine[0]["num_examples"], 32)
        for upto in range(1, 4):
            reference = RDPAccountant()
            # the class histogram where it was released (once, before the first step), then the steps
            reference.history = [*([histogram_entry()] if releases[hospital] else []),
                                 (mine[0]["noise_multiplier"], q, sum(r["steps"] for r in mine[:upto]))]
            assert mine[upto - 1]["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-6)
        assert mine[0]["epsilon"] < mine[1]["epsilon"] < mine[2]["epsilon"] <= 1.0 + 1e-2


def test_a_killed_run_resumes_to_the_uninterrupted_result(three_rounds: Path, tmp_path: Path):
    """Ctrl-C in a terminal (SIGINT to the whole process group: the driver, Ray and its workers) after round
    1: the command returns at once with the shell's code 130 and says how to continue. The resumed run is
    then killed outright (SIGKILL) after round 2 and resumed again: every round once, as if uninterrupted."""
    out = tmp_path / "run"
    log = tmp_path / "interrupted.log"
    proc = _started(*THREE_ROUNDS, "--out", str(out), log=log)
    try:
        _wait_for(out / "checkpoints" / "round-0001.npz", proc)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)  # before 2026-12-07 it never returned
    finally:
        _kill(proc)
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert f"continue with fedward simulate --resume {out}" in log.read_text(), log.read_text()[-3000:]
    deadline = time.monotonic() + 10  # Ray's workers and agents too (its agents lingered for a minute)
    while _alive_in_session(proc.pid):
        assert time.monotonic() < deadline, [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in _alive_in_session(proc.pid)]
        time.sleep(0.2)
    assert not (out / "model_card.json").exists()
    _a_checkpoint_of_other_shapes_is_refused_before_any_round(out, tmp_path / "changed")

    proc = _started("--resume", str(out), log=tmp_path / "killed.log")
    try:  # killed as round 3 starts (a round here takes a few seconds)
        _wait_for(out / "checkpoints" / "round-0002.npz", proc)
    finally:
        _kill(proc)  # the driver, Ray and its workers
    assert not (out / "model_card.json").exists()
    simulate("--resume", str(out))

    resumed, reference = read_metrics(out), read_metrics(three_rounds)
    keys = [(r["round"], r["hospital"], r["split"]) for r in resumed]
    expected = {(r["round"], r["hospital"], r["split"]): r for r in reference}
    resumed_card = json.loads((out / "model_card.json").read_text())
    assert len(keys) == len(set(keys)) == len(reference), (  # seen once (17 of 18 rows): which row, and why
        "every round once: continued, not duplicated", sorted(set(expected) - set(keys)),
        [k for k in keys if keys.count(k) > 1], resumed_card.get("rejected_replies"), resumed_card.get("rounds_skipped"))
    for row in resumed:
        twin = expected[(row["round"], row["hospital"], row["split"])]
        # FedAvg/FedAdam sum the replies in arrival order, which can differ between
        # runs: float addition is not associative, so weights may differ by ~1e-7.
        assert row["loss"] == pytest.approx(twin["loss"], abs=1e-4), (row, twin)
        assert row["epsilon"] == pytest.approx(twin["epsilon"], abs=1e-9)
        if row["accuracy"] is not None:
            assert row["accuracy"] == pytest.approx(twin["accuracy"], abs=1e-9)
    card = json.loads((out / "model_card.json").read_text())
    assert all(h["rounds_trained"] == [1, 2, 3] for h in card["hospitals"].values())
    releases = released(three_rounds)
    with PrivacyLedger(out / "ledgers" / "privacy-ledger.sqlite") as ledger:
        for line in ledger.datasets():
            charged = [c.round for c in ledger.charges(line.fingerprint)]
            # a class-histogram release as in the uninterrupted run (round -1, once per run), and the
            # interrupted round not charged twice
            assert charged == [-1] * releases[line.name] + [1, 2, 3], charged
    # resumed once more, the finished run says so and changes nothing (no Ray started)
    before = (out / "metrics.jsonl").read_bytes()
    again = simulate("--resume", str(out))
    assert f"{out} finished all 3 rounds; nothing to resume" in again.stdout, again.stdout[-2000:]
    assert (out / "metrics.jsonl").read_bytes() == before


def _started(*args: str, log: Path) -> subprocess.Popen:
    """In its own session, as a terminal's foreground job; its output in `log` (a pipe could fill and stall it)."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "fedward", "simulate", *args], cwd=PROJECT_ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"the run died before {path.name} was written"
        time.sleep(0.05)


def _alive_in_session(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, ValueError):
                continue
            if int(session) == sid and state != "Z":
                found.append(int(entry.name))
    return found


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _a_checkpoint_of_other_shapes_is_refused_before_any_round(killed: Path, copy: Path) -> None:
    """A run whose data now gives another model (here one weight's shape changed, as sequence-rnn's
    inputs went from 9 to 11 channels) stops before round 2 is sent, naming the weight and both shapes."""
    shutil.copytree(killed, copy)
    path = copy / "checkpoints" / "round-0001.npz"
    with np.load(path, allow_pickle=False) as saved:
        members = {name: saved[name] for name in saved.files}
    first = next(name for name in members if name.startswith("arrays/") and members[name].ndim == 2)
    wrong = members[first][:, :-1]
    members[first] = wrong
    np.savez(path, **members)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "RAY_DISABLE_IMPORT_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "fedward", "simulate", "--resume", str(copy)], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    key = first.removeprefix("arrays/")
    assert result.returncode != 0, result.stdout[-2000:]
    assert f"its checkpoint does not fit the model this data gives now (wrong shape: {key} {wrong.shape}" in (
        result.stdout + result.stderr), result.stderr[-3000:]
    assert "start a new run" in result.stderr
    assert not any("\"round\": 2" in line for line in (copy / "metrics.jsonl").read_text().splitlines())
    assert not (copy / "final_model.pt").exists()


def test_sequence_rnn_on_mitbih_records(mitbih_subset: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = simulate("--task", "sequence-rnn", "--data", str(mitbih_subset), "--hospitals", "2",
                      "--partition", "natural", "--rounds", "2", "--max-samples", "600", "--model", "gru",
                      "--balanced-tau", "1.75", "--out", str(out))
    card = assert_run_directory(out, rounds=2)
    assert card["config"]["model"] == "gru" and card["config"]["balanced-tau"] == 1.75
    # A WFDB folder trains per patient: 4 patients' noisy class fractions are mostly noise, so the server
    # does not decide by a prior made of it (common/class_prior.py `reliable`) and says so.
    assert "class_prior" not in card["final_metrics"]
    assert "the prior would be mostly noise, so decisions are by argmax" in result.stdout + result.stderr
    assert all(r["macro_f1"] is not None for r in read_metrics(out) if r["split"] == "evaluate")


def small_ecg_npz(data_dir: Path, path: Path) -> Path:
    """A small univariate ECG set as a user brings one (the UCR ECG200 format: 100 beats to train,
    100 to test, ~1/3 abnormal): MIT-BIH's z-normalised MLII beats, normal vs any arrhythmia,
    the test beats from other patients than the training ones."""
    from common.tasks.sequence_rnn.dataset import read_record

    rng = np.random.default_rng(0)

    def draw(records: tuple[str, ...], normal: int, abnormal: int) -> tuple[np.ndarray, np.ndarray]:
        beats = [read_record(data_dir / "mitbih_arrhythmia" / r) for r in records]
        x = np.concatenate([b[0][:, :, 0] for b in beats])  # channel 0: the z-normalised MLII beat
        y = (np.concatenate([b[1] for b in beats]) > 0).astype(np.int64)
        pick = np.concatenate([rng.choice(np.flatnonzero(y == 0), normal, replace=False),
                               rng.choice(np.flatnonzero(y == 1), abnormal, replace=False)])
        return x[pick], y[pick]

    x, y = draw(("105", "119"), 69, 31)
    x_test, y_test = draw(("100", "208"), 64, 36)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def test_the_default_sequence_model_learns_a_small_ecg_set_without_dp(data_dir: Path, tmp_path: Path):
    """`fedward simulate --task sequence-rnn --data small.npz --no-dp` with no tuning flag: 4 hospitals
    of ~19 training beats each take one step an epoch, so at 1 epoch a round the model answered the
    majority class (balanced accuracy 0.500); the task's min-local-steps makes each round 30 steps."""
    data = small_ecg_npz(data_dir, tmp_path / "small_ecg.npz")
    out = tmp_path / "run"
    result = simulate("--task", "sequence-rnn", "--data", str(data), "--no-dp", "--out", str(out))
    card = assert_run_directory(out, rounds=10)
    central = next(r for r in read_metrics(out) if r["hospital"] == "server" and r["round"] == 10)
    y_test = np.load(data)["y_test"]
    majority = max(np.mean(y_test), 1 - np.mean(y_test))  # 0.64
    assert central["balanced_accuracy"] >= 0.7, result.stdout[-2000:]
    assert central["accuracy"] >= majority + 0.05, (central, majority)
    assert "at least 30 local steps a round" in result.stdout.splitlines()[0]
    assert card["config"]["min-local-steps"] == 30
    assert all(r["steps"] >= 30 for r in read_metrics(out) if r["split"] == "train")
    assert all(h["local_steps_last_round"] == 30 for h in card["hospitals"].values())  # 30 epochs of 1 step


def test_image_gan_writes_samples_and_tstr(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    simulate("--task", "image-gan", "--data", str(data_dir / "medmnist" / "pneumoniamnist.npz"),
             "--hospitals", "2", "--rounds", "2", "--max-samples", "300", "--epsilon", "10",
             "--out", str(out))
    card = assert_run_directory(out, rounds=2)
    final = card["final_metrics"]
    assert 0 <= final["tstr-accuracy"] <= 1 and 0 <= final["trtr-accuracy"] <= 1
    assert final["fd"] > 0 and final["fd-real"] > 0 and final["fd-ratio"] == final["fd"] / final["fd-real"]
    assert (out / "samples.png").stat().st_size > 500
    keys = set(torch.load(out / "final_model.pt"))
    assert any(k.startswith("generator.") for k in keys) and any(k.startswith("discriminator.") for k in keys)
    assert all(0 < h["epsilon_spent"] <= 10.01 for h in card["hospitals"].values())
