"""A real federation on loopback: a TLS SuperLink with node authentication and
SuperNodes, started as a hospital and an operator would (`fedward superlink`,
`flwr supernode register`, `fedward supernode`, `flwr run`). Every process is in
its own session and is stopped by process group at the end, even on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackFederation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        self.keys = root / "keys"
        self.home = root / "flwr-home"
        self.port = free_port()  # the Fleet API, what hospitals reach
        self.control_port = free_port()  # the control API, on 127.0.0.1 only
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
        }
        self.home.mkdir(parents=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "127.0.0.1:{self.control_port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n'
        )

    # -------------------------------------------------------------- commands
    def fedward(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "fedward"), *args], cwd=PROJECT_ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=PROJECT_ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        process = subprocess.Popen([str(BIN / "fedward"), *args], cwd=PROJECT_ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    # ------------------------------------------------------------ set-up steps
    def make_certs(self, *hospitals: str) -> None:
        assert self.fedward("certs", "init", "--out", str(self.certs), "--server-name", "localhost").returncode == 0
        for name in hospitals:
            assert self.fedward("certs", "hospital", name, "--out", str(self.keys)).returncode == 0

    def start_superlink(self, in_memory: bool = False) -> None:
        database = ":flwr-in-memory:" if in_memory else str(self.root / "state.db")
        self.start("superlink", "superlink", "--certs", str(self.certs), "--database",
                   database, "--host", "127.0.0.1", "--port", str(self.port),
                   "--control-port", str(self.control_port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.processes["superlink"].poll() is None, self.log("superlink")
            time.sleep(0.5)
        raise AssertionError("SuperLink did not open its port:\n" + self.log("superlink"))

    def register(self, name: str) -> None:
        result = self.flwr("supernode", "register", str(self.keys / f"{name}.pub"), "fed", "--name", name)
        assert result.returncode == 0, result.stdout + result.stderr

    def start_node(self, name: str, data: Path, cold: bool = False, *extra: str) -> subprocess.Popen:
        return self.start(
            f"node-{name}", "supernode", "--superlink", f"127.0.0.1:{self.port}",
            "--ca", str(self.certs / "ca.crt"), "--key", str(self.keys / name),
            "--data", str(data), "--hospital", name, "--port", str(free_port()),
            *(["--cold"] if cold else []), *extra,
        )

    def online_nodes(self) -> int:
        result = self.flwr("supernode", "ls", "fed", "--format", "json", timeout=60)
        return result.stdout.count('"online"')

    def wait_online(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.online_nodes() < count:
            assert time.monotonic() < deadline, f"fewer than {count} SuperNodes online"
            time.sleep(1)

    def run(self, run_config: str, timeout: float = 480) -> subprocess.Popen:
        log = (self.root / "run.log").open("w")
        process = subprocess.Popen(
            [str(BIN / "flwr"), "run", ".", "fed", "--stream", "--run-config", run_config],
            cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes["run"] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            try:
                self.stop(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
