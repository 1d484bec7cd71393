"""The warm executor forks a ClientApp process that runs Flower's run_clientapp."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
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

    def fake_run_clientapp(**kwargs):  # runs in the forked child
        parent = os.getppid()
        record.write_text(json.dumps({"pid": os.getpid(), "parent": parent, "parent_threads": thread_names(parent),
                                      **{k: kwargs[k] for k in ("token", "runtime_api_address")}}))

    monkeypatch.setattr(warm_executor, "run_clientapp", fake_run_clientapp)
    monkeypatch.setattr(warm_executor.ForkExecutor, "zygote", warm_executor.Zygote())
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
    assert child["pid"] != os.getpid()
    # forked by the zygote, which holds no gRPC thread whose locks the child could inherit
    assert child["parent"] == warm_executor.ForkExecutor.zygote.pid
    assert not any(name.startswith("grpc") for name in child["parent_threads"]), child["parent_threads"]
    assert time.perf_counter() - start < 5  # no interpreter start, no torch import
    channel.close()


def test_other_task_types_go_to_flowers_subprocess_launcher(monkeypatch):
    launched = []
    monkeypatch.setattr(warm_executor.SubprocessExecutor, "launch", lambda self, s: launched.append(s.task_type) or "stock")
    assert warm_executor.ForkExecutor().launch(spec(TaskType.SERVER_APP, "t")) == "stock"
    assert launched == [TaskType.SERVER_APP]
