"""A SuperExec whose ClientApp processes start warm: fork from a parent that has
already imported torch, Opacus and the task code.

Flower's SuperNode (isolation `subprocess`) starts each ClientApp execution as a
fresh `flwr-clientapp` process, which re-imports torch and the tasks for every
message: seconds per message, most of a deployment round on a small machine.
Started with `flower-supernode --isolation process`, this process does what
`flower-superexec` does (it runs Flower's own `run_superexec` loop against the
SuperNode's Runtime API) but launches each ClientApp with `os.fork()` and calls
Flower's `run_clientapp` in the child: same token handshake, same isolation from
the parent's later state, none of the import cost (`client/warm_up.py` also runs
the handlers' code paths once, for what torch and Opacus import on first use).

The fork happens in a zygote: a process forked once at start-up, after the
imports and before the SuperExec loop opens its gRPC channel. A process with a
live gRPC channel has about ten gRPC threads, and a child forked from it
inherits whatever locks those threads held at that instant: gRPC does not support
fork() without exec (unless GRPC_ENABLE_FORK_SUPPORT), and a ClientApp forked
that way hung, rarely, after a SuperLink restart. The zygote never touches gRPC;
the loop sends it each launch over a pipe.

Tied to flwr 1.41's SuperExec internals (pinned in pyproject.toml); a test runs a
real deployment through it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
from typing import Any, BinaryIO

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
from flwr.supernode.runtime.run_clientapp import run_clientapp

from common.flower_latency import tighten_object_pull_backoff

POLL_INTERVAL_S = "0.1"  # Flower's default of 1 s is felt twice per round


class Zygote:
    """A warm, gRPC-free process that forks one ClientApp per launch request."""

    def __init__(self) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write)
            _serve(os.fdopen(read, "rb"))
            os._exit(0)
        os.close(read)
        self.pid = pid
        self._requests = os.fdopen(write, "wb")

    def launch(self, request: dict[str, Any]) -> None:
        pickle.dump(request, self._requests)
        self._requests.flush()


def _serve(requests: BinaryIO) -> None:
    """The zygote's loop; ends when the SuperExec loop (the pipe's writer) is gone."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished ClientApps are reaped by the kernel
    while True:
        try:
            request = pickle.load(requests)
        except (EOFError, OSError):
            return
        if os.fork() == 0:
            requests.close()
            os._exit(_run_clientapp(request))


def _run_clientapp(request: dict[str, Any]) -> int:
    code = 0
    try:
        run_clientapp(**request, runtime_dependency_install=False)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, then leave the child
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


class ForkExecutor(SubprocessExecutor):
    """Launch ClientApps through the zygote; anything else as Flower does."""

    zygote: Zygote | None = None

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP or self.zygote is None:
            return super().launch(spec)
        certificates = None
        if not spec.insecure and spec.root_certificates_path:
            with open(spec.root_certificates_path, "rb") as handle:
                certificates = handle.read()
        self.zygote.launch({
            "runtime_api_address": spec.runtime_api_address, "token": spec.token,
            "insecure": spec.insecure, "certificates": certificates, "parent_pid": spec.parent_pid,
        })
        return LaunchResult.accepted()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_INTERVAL_S)
    import client.app  # noqa: F401 - the warm-up: torch, Opacus, tasks
    from client.warm_up import warm_up

    warm_up()  # and what they import on first use

    tighten_object_pull_backoff()  # forked ClientApps inherit it

    ForkExecutor.zygote = Zygote()  # before run_superexec opens any gRPC channel
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the zygote is reaped by the kernel when it ends

    def executor(*_: Any, **__: Any) -> ForkExecutor:
        return ForkExecutor()

    superexec.get_executor = executor  # run_superexec builds its executor through this name
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address, insecure=True,
        parent_pid=args.parent_pid, runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
