"""`flwr run .` on a local simulation federation runs the same app as `fedward simulate`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, assert_run_directory

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def superlinks_on(port: int) -> list[int]:
    """Pids of flower-superlink processes serving the given Control API port."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "flower-superlink" in cmdline and f":{port}" in cmdline:
                found.append(int(proc.name))
    return found


def test_flwr_run_on_a_local_simulation_federation(tmp_path: Path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 2\n"
    )
    control = free_port()
    bin_dir = Path(sys.executable).parent  # flwr starts flower-superlink from PATH
    env = {
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control), "HF_DATASETS_OFFLINE": "1",
    }
    out = tmp_path / "run"
    flwr = bin_dir / "flwr"
    try:
        result = subprocess.run(
            [str(flwr), "run", ".", "local", "--stream", "--run-config",
             f'out-dir="{out}" num-server-rounds=2 epsilon=2.0'],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        for pid in superlinks_on(control):  # the managed SuperLink outlives `flwr run`
            os.kill(pid, signal.SIGTERM)
    card = assert_run_directory(out, rounds=2)
    assert card["config"]["epsilon"] == 2.0  # --run-config reached the ServerApp
    assert all(0 < h["epsilon_spent"] <= 2.01 for h in card["hospitals"].values())
    assert json.loads((out / "model_card.json").read_text())["task"] == "tabular"
