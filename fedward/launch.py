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
from pathlib import Path

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


def run_warm_supernode(command: list[str], runtime_port: int) -> int:
    """Run the SuperNode (idle waits capped) with `--isolation process` beside
    fedward's warm executor.

    Both are children of this process; it forwards SIGTERM/SIGINT, and when the
    SuperNode ends, stops the executor and returns the SuperNode's exit code.
    """
    import signal
    import subprocess
    import sys

    node = subprocess.Popen([sys.executable, "-m", "client.fast_supernode", *command[1:], "--isolation", "process"])
    executor = subprocess.Popen([
        sys.executable, "-m", "client.warm_executor",
        "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--parent-pid", str(node.pid),
    ])

    def forward(signum: int, _frame: object) -> None:
        for child in (node, executor):
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = node.wait()
    if executor.poll() is None:
        executor.terminate()
        executor.wait(timeout=30)
    return code
