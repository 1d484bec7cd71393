"""Command lines for Flower's SuperLink and SuperNode, checked before they start.

Each check names the bad file (missing, unreadable, expired, wrong key type,
absent data) so nothing connects with a broken set-up. `exec` then replaces this
process with Flower's own command, so signals and exit codes are Flower's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
from pathlib import Path
from typing import IO

from common.errors import FedwardError
from deploy.certs import cert_paths, check_loopback_san, check_node_key, check_tls_files


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
CONTROL_API_WARNING = (
    "fedward: WARNING: the SuperLink's control API (what `flwr run`, `flwr ls`, `flwr stop` and "
    "`flwr supernode register/unregister` talk to) is served on {address}. Flower's open-source "
    "control API has no user authentication: anyone who reaches that address with the public "
    "ca.crt can register or remove hospitals' nodes, list, start and stop runs (and a run's "
    "ServerApp is code of their choosing). Keep it on 127.0.0.1 and reach it through an SSH "
    "tunnel (deploy/README.md) unless a firewall already limits it to the operator."
)


def superlink_command(certs: Path, database: Path, host: str, port: int,
                      control_host: str = "127.0.0.1", control_port: int = 9093) -> list[str]:
    """Flower's SuperLink through fedward.split_superlink: the Fleet API alone on host:port
    (the hospitals' side), every API on control_host:control_port (loopback by default)."""
    paths = cert_paths(certs)
    check_tls_files(paths.ca_cert, paths.server_cert, paths.server_key)
    check_loopback_san(paths.server_cert)
    if port == control_port:
        raise FedwardError(f"--port and --control-port are both {port}: the control API needs a port of its own")
    if str(database) != ":flwr-in-memory:" and not database.parent.is_dir():
        raise FedwardError(f"--database {database}: folder {database.parent} does not exist; create it "
                           f"(mkdir -p {database.parent}) on fast local storage")
    _binary("flower-superlink")  # installed with flwr
    return [
        sys.executable, "-m", "fedward.split_superlink", "--public-host", host, "--public-port", str(port), "--",
        "--ssl-ca-certfile", str(paths.ca_cert), "--ssl-certfile", str(paths.server_cert),
        "--ssl-keyfile", str(paths.server_key), "--enable-supernode-auth",
        "--database", str(database), "--host", control_host, "--port", str(control_port),
        "--disable-runtime-dependency-installation",
    ]


def control_api_is_open(control_host: str) -> bool:
    return control_host not in LOOPBACK_HOSTS


def supernode_command(
    superlink: str, ca_cert: Path, key: Path, data_path: Path, hospital: str, port: int,
    extra_node_config: str = "",
) -> list[str]:
    check_tls_files(ca_cert)
    check_node_key(key)
    if not data_path.exists():
        raise FedwardError(f"--data {data_path} does not exist on this machine; pass the hospital's data path")
    if not os.access(data_path, os.R_OK):
        raise FedwardError(f"--data {data_path} is not readable by this user")
    node_config = f'data-path="{data_path}" hospital="{hospital}" {extra_node_config}'.strip()
    return [
        _binary("flower-supernode"),
        "--superlink", superlink, "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(key), "--port", str(port),
        "--node-config", node_config,
    ]


def describe(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FedwardError(f"{name} is not on PATH; install fedward (pip install -e .) in this environment")
    return found


ACTIVATION_REFUSED = 305  # returned by _run_supernode_once when Flower's SuperNode printed ...
ACTIVATION_REFUSED_LINE = "Failed to activate SuperNode"  # ... this reason for its exit 305 (process exits 1);
# other 305s (TLS verification, no route) are not retried: they are not this node's stale session
RETRY_DELAYS_S = (5.0, 10.0, 20.0, 30.0)


def run_supernode(command: list[str], runtime_port: int, approved: tuple[str, ...] = (), cold: bool = False,
                  activation_wait_s: float = 120.0) -> int:
    """Run the SuperNode with `--isolation process` beside fedward's executor (warm: forked
    ClientApps; cold: a fresh interpreter per ClientApp), both through client.fab_guard.

    Both children die with this process, even on `kill -9` (PR_SET_PDEATHSIG). It forwards
    SIGTERM/SIGINT; when the SuperNode ends it stops the executor. A SuperNode the SuperLink
    refuses to activate (exit 305: key not registered, or its previous session still marked
    online until Flower's heartbeat expires) is started again with backoff for
    `activation_wait_s` seconds, saying so.
    """
    import time

    deadline = time.monotonic() + activation_wait_s
    attempt = 0
    while True:
        code = _run_supernode_once(command, runtime_port, approved, cold)
        if code != ACTIVATION_REFUSED:
            return code
        delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
        attempt += 1
        if time.monotonic() + delay > deadline:
            print(f"fedward: error: the SuperLink did not activate this node (Flower exit 305, reason above) for "
                  f"{activation_wait_s:g} s; ask the operator whether this hospital's public key is registered "
                  "(`flwr supernode ls`)", file=sys.stderr, flush=True)
            return code
        print(f"fedward: the SuperLink did not activate this node (Flower exit 305, reason above): either its key "
              "is not registered, or this node's previous session is still marked online (Flower notices a "
              f"stopped node after about 47 s without heartbeats); trying again in {delay:g} s "
              f"(attempt {attempt + 1}, until {activation_wait_s:g} s have passed)", file=sys.stderr, flush=True)
        time.sleep(delay)


def _run_supernode_once(command: list[str], runtime_port: int, approved: tuple[str, ...], cold: bool) -> int:
    import signal
    import subprocess

    from client.parent_death import die_with_parent

    parent = os.getpid()

    def tie() -> None:
        die_with_parent(expected_parent=parent)

    node_command, executor_command = supernode_processes(command, runtime_port, approved, cold)
    node = subprocess.Popen(node_command, preexec_fn=tie,  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    refused = threading.Event()
    relay = threading.Thread(target=_relay, args=(node.stdout, refused), daemon=True)
    relay.start()
    executor = subprocess.Popen([part.replace(NODE_PID, str(node.pid)) for part in executor_command],
                                preexec_fn=tie)  # noqa: S603
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in (node, executor):
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = node.wait()
    relay.join(timeout=5)
    if executor.poll() is None:
        executor.terminate()
        executor.wait(timeout=30)
    if code == 0 and not stopping:
        print("fedward: the SuperNode stopped although nobody stopped it here; if the operator unregistered "
              "this hospital's key, its connection is closed for good (ask the operator: `flwr supernode ls`)",
              file=sys.stderr, flush=True)
    return ACTIVATION_REFUSED if code != 0 and refused.is_set() else code


NODE_PID = "{SUPERNODE_PID}"


def supernode_processes(command: list[str], runtime_port: int, approved: tuple[str, ...] = (),
                        cold: bool = False) -> tuple[list[str], list[str]]:
    """What `fedward supernode` runs: Flower's SuperNode (idle waits capped, `--isolation process`)
    and fedward's executor, which runs every ClientApp through client.fab_guard. The executor's
    `--parent-pid` is NODE_PID until the SuperNode has started."""
    node = ([command[0], *command[1:]] if cold else [sys.executable, "-m", "client.fast_supernode", *command[1:]])
    executor = [sys.executable, "-m", "client.warm_executor", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                "--parent-pid", NODE_PID, *(["--cold"] if cold else []), *(f"--approve-fab={sha}" for sha in approved)]
    return [*node, "--isolation", "process"], executor


def _relay(output: IO[bytes], refused: threading.Event) -> None:
    """Copy the SuperNode's output to ours, noting Flower's activation refusal."""
    for line in output:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        if ACTIVATION_REFUSED_LINE.encode() in line:
            refused.set()
