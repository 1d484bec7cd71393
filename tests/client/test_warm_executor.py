"""The warm executor forks a ClientApp process that runs Flower's run_clientapp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

from client import warm_executor


def spec(task_type: TaskType, token: str) -> ExecutionSpec:
    return ExecutionSpec(task_type=task_type, runtime_api_address="127.0.0.1:9", token=token,
                         insecure=True, root_certificates_path=None, runtime_dependency_install=False,
                         parent_pid=None, suppress_output=True, task_id=1)


def thread_names(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")]


def test_clientapp_is_forked_from_a_grpc_free_zygote_with_the_spec_token(tmp_path: Path, monkeypatch):
    record = tmp_path / "child.json"

    def fake_run_clientapp(approved, **kwargs):  # runs in the forked child
        parent = os.getppid()
        record.write_text(json.dumps({"pid": os.getpid(), "parent": parent, "parent_threads": thread_names(parent),
                                      "approved": list(approved),
                                      **{k: kwargs[k] for k in ("token", "runtime_api_address")}}))

    monkeypatch.setattr(warm_executor, "run_guarded_clientapp", fake_run_clientapp)
    monkeypatch.setattr(warm_executor.ForkExecutor, "zygote", warm_executor.Zygote(("ab" * 32,)))
    # The executor then opens gRPC channels, as Flower's SuperExec loop does: threads appear.
    channel = grpc.insecure_channel("127.0.0.1:9")
    try:
        grpc.channel_ready_future(channel).result(timeout=0.3)
    except grpc.FutureTimeoutError:
        pass
    assert any(name.startswith("grpc") for name in thread_names(os.getpid()))
    start = time.perf_counter()
    result = warm_executor.ForkExecutor().launch(spec(TaskType.CLIENT_APP, "tok-123"))
    assert result.status == LaunchResultStatus.ACCEPTED
    deadline = time.monotonic() + 10
    while not record.exists() or not record.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = json.loads(record.read_text())
    assert child["token"] == "tok-123" and child["runtime_api_address"] == "127.0.0.1:9"
    assert child["approved"] == ["ab" * 32], "the ClientApp runs through client.fab_guard with the node's approvals"
    assert child["pid"] != os.getpid()
    # forked by the zygote, which holds no gRPC thread whose locks the child could inherit
    assert child["parent"] == warm_executor.ForkExecutor.zygote.pid
    assert not any(name.startswith("grpc") for name in child["parent_threads"]), child["parent_threads"]
    assert time.perf_counter() - start < 5  # no interpreter start, no torch import
    channel.close()


@pytest.mark.parametrize("executor", [warm_executor.ForkExecutor, warm_executor.ColdExecutor])
def test_a_supernodes_executor_launches_nothing_but_a_clientapp(executor, monkeypatch):
    """Flower's own launcher would start flwr-serverapp & co., which load app code from the
    run's bundle; on a hospital's SuperNode only the guarded ClientApp is started."""
    launched = []
    monkeypatch.setattr(warm_executor.subprocess, "Popen", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(warm_executor.SubprocessExecutor, "launch", lambda self, s: launched.append(s))
    result = executor().launch(spec(TaskType.SERVER_APP, "t"))
    assert result.status == LaunchResultStatus.FAILED and launched == []


def test_the_cold_executor_starts_a_fresh_guarded_clientapp(monkeypatch):
    launched = []
    monkeypatch.setattr(warm_executor.subprocess, "Popen", lambda args, **k: launched.append(args))
    result = warm_executor.ColdExecutor(("cd" * 32,)).launch(spec(TaskType.CLIENT_APP, "tok-9"))
    assert result.status == LaunchResultStatus.ACCEPTED
    (args,) = launched
    assert args[:3] == [sys.executable, "-m", "client.fab_guard"] and "flwr-clientapp" not in " ".join(args)
    assert args[args.index("--token") + 1] == "tok-9" and f"--approve-fab={'cd' * 32}" in args


WARM_ZYGOTE = """
import json, os, sys, tempfile, time
import client.app, torch
from client.warm_up import warm_up
warm_up()
threads = torch.get_num_threads()
hung = 0
for _ in range(3):  # ClientApps forked from the warm process, torch on all threads
    pid = os.fork()
    if pid == 0:
        x = torch.randn(256, 256)
        (x @ x).sum()
        os._exit(0)
    deadline = time.monotonic() + 60
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
from common.config import RunConfig
from server.federation import run_federation
from tests.inprocess_grid import InProcessGrid
imported = set()
def handlers(msg, context):  # what the ClientApp imports, not the server
    before = set(sys.modules)
    reply = client.app.app(msg, context)
    imported.update(set(sys.modules) - before)
    return reply
nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
run_federation(InProcessGrid(handlers, nodes),
               RunConfig(num_server_rounds=1, min_hospitals=2, epsilon=3.0, out_dir=tempfile.mkdtemp()))
import numpy as np  # and the image task's DP training (its per-layer mode)
from common.data import Samples
from common.privacy import DPState
from common.tasks import get_task
before = set(sys.modules)
cnn = get_task("image-cnn")
images = Samples(np.random.rand(8, 1, 28, 28).astype(np.float32), np.arange(8) % 2)
cnn.train(cnn.build_model((1, 28, 28), 2, RunConfig(task="image-cnn", lr=0.1)), images, 2,
          RunConfig(task="image-cnn", lr=0.1), DPState(1.0, 1.0, 1e-5), torch.device("cpu"), 0)
imported.update(set(sys.modules) - before)
print(json.dumps({"hung": hung, "threads": threads,
                  "imported": sorted(m for m in imported if m.startswith(("torch", "opacus")))}))
"""


@pytest.mark.slow
def test_warm_up_loads_what_a_dp_round_needs_and_forked_children_do_not_hang():
    """Without the warm-up each forked ClientApp imported torch._dynamo & co. (about
    200 modules, ~1 s) at its first optimiser. A warm-up on all threads started
    torch's OpenMP workers, and every child forked afterwards hung."""
    result = subprocess.run([sys.executable, "-c", WARM_ZYGOTE], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["hung"] == 0, f"{outcome['hung']} of 3 forked children hung"
    assert outcome["imported"] == [], "a DP round (and a DP CNN step) after the warm-up imports nothing more"
    assert outcome["threads"] == torch.get_num_threads(), "the warm-up leaves the thread setting as it was"
