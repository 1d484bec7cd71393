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

Every ClientApp it launches runs through `client/fab_guard.py`: the hospital's
own ClientApp, never code from the run's app bundle unless the hospital approved
that bundle's SHA-256 (`--approve-fab`). With `--cold` it launches each ClientApp
as a fresh interpreter (`python -m client.fab_guard`, Flower's stock cost of a
process per message) through the same guard; only ClientApp tasks are launched.

Tied to flwr 1.41's SuperExec internals (pinned in pyproject.toml); a test runs a
real deployment through it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import subprocess
import sys
from typing import Any, BinaryIO

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from client.fab_guard import run_guarded_clientapp
from client.parent_death import die_with_parent
from common.flower_latency import tighten_object_pull_backoff

POLL_INTERVAL_S = "0.1"  # Flower's default of 1 s is felt twice per round




class Zygote:
    """A warm, gRPC-free process that forks one ClientApp per launch request."""

    def __init__(self, approved: tuple[str, ...] = ()) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write)
            die_with_parent()
            _serve(os.fdopen(read, "rb"), approved)
            os._exit(0)
        os.close(read)
        self.pid = pid
        self._requests = os.fdopen(write, "wb")

    def launch(self, request: dict[str, Any]) -> None:
        pickle.dump(request, self._requests)
        self._requests.flush()


def _serve(requests: BinaryIO, approved: tuple[str, ...]) -> None:
    """The zygote's loop; ends when the SuperExec loop (the pipe's writer) is gone."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished ClientApps are reaped by the kernel
    while True:
        try:
            request = pickle.load(requests)
        except (EOFError, OSError):
            return
        if os.fork() == 0:
            requests.close()
            os._exit(_run_clientapp(request, approved))


def _run_clientapp(request: dict[str, Any], approved: tuple[str, ...]) -> int:
    code = 0
    try:
        run_guarded_clientapp(approved, **request, runtime_dependency_install=False)
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


NOT_A_CLIENTAPP = "a SuperNode's executor runs only ClientApps (fedward's own, client.app)"


class ColdExecutor(SubprocessExecutor):
    """Each ClientApp in a fresh interpreter, through client.fab_guard; nothing else."""

    def __init__(self, approved: tuple[str, ...] = ()) -> None:
        self.approved = approved

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(NOT_A_CLIENTAPP)
        args = [sys.executable, "-m", "client.fab_guard", "--runtime-api-address", spec.runtime_api_address,
                "--token", spec.token, *(f"--approve-fab={sha}" for sha in self.approved)]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        subprocess.Popen(args, preexec_fn=die_with_parent)  # noqa: S603 - our own module
        return LaunchResult.accepted()


class ForkExecutor(SubprocessExecutor):
    """Launch ClientApps through the zygote; nothing else."""

    zygote: Zygote | None = None

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(NOT_A_CLIENTAPP)
        if self.zygote is None:
            return LaunchResult.failed("the warm executor has no zygote")
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
    parser.add_argument("--approve-fab", action="append", default=[], metavar="SHA256",
                        help="run the ClientApp of the app bundle with this SHA-256 (default: none, ever)")
    parser.add_argument("--cold", action="store_true", help="a fresh interpreter per ClientApp, no fork")
    args = parser.parse_args(argv)
    die_with_parent()
    approved = tuple(args.approve_fab)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ClientApps and the zygote are reaped by the kernel
    if args.cold:
        def executor(*_: Any, **__: Any) -> SubprocessExecutor:
            return ColdExecutor(approved)
    else:
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_INTERVAL_S)
        import client.app  # noqa: F401 - the warm-up: torch, Opacus, tasks
        from client.warm_up import warm_up

        warm_up()  # and what they import on first use
        tighten_object_pull_backoff()  # forked ClientApps inherit it
        ForkExecutor.zygote = Zygote(approved)  # before run_superexec opens any gRPC channel

        def executor(*_: Any, **__: Any) -> SubprocessExecutor:
            return ForkExecutor()

    superexec.get_executor = executor  # run_superexec builds its executor through this name
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address, insecure=True,
        parent_pid=args.parent_pid, runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
