"""A SuperExec whose ClientApp processes start warm: fork from a parent that has
already imported torch, Opacus and the task code.

Flower's SuperNode (isolation `subprocess`) starts each ClientApp execution as a
fresh `flwr-clientapp` process, which re-imports torch and the tasks for every
message: seconds per message, most of a deployment round on a small machine.
Started with `flower-supernode --isolation process`, this process does what
`flower-superexec` does (it runs Flower's own `run_superexec` loop against the
SuperNode's Runtime API) but launches each ClientApp with `os.fork()` and calls
Flower's `run_clientapp` in the child: same token handshake, same isolation from
the parent's later state, none of the import cost.

Tied to flwr 1.41's SuperExec internals (pinned in pyproject.toml); a test runs a
real deployment through it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
from flwr.supernode.runtime.run_clientapp import run_clientapp

from common.flower_latency import tighten_object_pull_backoff

POLL_INTERVAL_S = "0.1"  # Flower's default of 1 s is felt twice per round


class ForkExecutor(SubprocessExecutor):
    """Launch ClientApps by forking this warm process; anything else as Flower does."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        certificates = None
        if not spec.insecure and spec.root_certificates_path:
            with open(spec.root_certificates_path, "rb") as handle:
                certificates = handle.read()
        pid = os.fork()
        if pid == 0:  # the ClientApp process
            code = 0
            try:
                run_clientapp(
                    runtime_api_address=spec.runtime_api_address, token=spec.token,
                    insecure=spec.insecure, certificates=certificates,
                    parent_pid=spec.parent_pid, runtime_dependency_install=False,
                )
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - report, then leave the child
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        return LaunchResult.accepted()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_INTERVAL_S)
    import client.app  # noqa: F401 - the warm-up: torch, Opacus, tasks

    tighten_object_pull_backoff()  # forked ClientApps inherit it

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished ClientApps are reaped by the kernel

    def executor(*_: Any, **__: Any) -> ForkExecutor:
        return ForkExecutor()

    superexec.get_executor = executor  # run_superexec builds its executor through this name
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address, insecure=True,
        parent_pid=args.parent_pid, runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
