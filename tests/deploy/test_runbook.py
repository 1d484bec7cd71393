"""deploy/README.md's commands, run as written on loopback (tests/deploy/runbook.py).

One federation (its set-up is most of the cost) carries the deployment checks of
issue 16: the runbook's own run completes and records its status (items 5, 6); a
client reaching the SuperLink at another address than the operator's loopback
can neither register a node nor list runs (item 4); a run whose app bundle names
a ClientApp of its own is refused at every hospital, that code never runs, and
the operator's launcher exits non-zero with the reason (items 0, 6); `kill -9`
of a hospital's `fedward supernode` takes its SuperNode and executor with it,
and the hospital restarted at once comes back online (item 6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.deploy.loopback import BIN, free_port
from tests.deploy.runbook import Block, blocks, find

HOSPITALS = ("cleveland", "hungarian", "va")
ACTIVATED = "SuperNode ID"  # what Flower's SuperNode logs once the SuperLink activated it
PUBLIC_NAME = "127.0.0.2"  # fl.consortium.org: a local address that is not the operator's 127.0.0.1


def test_the_runbook_blocks_are_the_ones_the_test_runs():
    """A new runnable block must be added to the end-to-end test below (or shown as `sh`)."""
    firsts = [(b.section, b.kind, b.lines[0].split()[:3]) for b in blocks()]
    assert firsts == [
        ("Operator", "bash", ["fedward", "certs", "init"]),
        ("Operator", "bash", ["mkdir", "-p", "/var/lib/fedward"]),
        ("Operator", "toml", ["[superlink]"]),
        ("Operator", "bash", ["flwr", "supernode", "register"]),
        ("Operator", "bash", ["mkdir", "-p", "/srv/fedward/runs"]),
        ("Hospital IT", "bash", ["fedward", "certs", "hospital"]),
        ("Hospital IT", "bash", ["mkdir", "-p", "/srv/fedward"]),
    ], firsts


class Deployment:
    """The operator's and each hospital's machine as folders; long-running commands
    (`fedward superlink`, `fedward supernode`) in the background, in their own session."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.operator = root / "operator"
        self.port, self.control_port = free_port(), free_port()
        self.home = root / "flwr-home"
        for folder in (self.operator, self.home):
            folder.mkdir(parents=True)
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_HOME": str(self.home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.common = {"fl.consortium.org": PUBLIC_NAME, "9092": str(self.port), "9093": str(self.control_port),
                       "/var/lib/fedward": str(root / "var-lib-fedward"), "/srv/fedward": str(root / "srv-fedward"),
                       "/abs/path/certs": str(self.operator / "certs"), "run . consortium": f"run {PROJECT_ROOT} consortium"}
        self.data_dir = data_dir
        self.background: dict[str, subprocess.Popen] = {}

    def hospital(self, name: str) -> dict[str, str]:
        own = self.root / f"{name}-data"  # va's data is a copy, so a test can plant a bad row in it
        if name == "va" and not own.exists():
            own.mkdir()
            shutil.copy(self.data_dir / "heart_disease_uci" / "processed.va.data", own)
        return {**self.common, "cleveland": name, "9094": str(free_port()),
                "/data/heart": str(own if own.exists() else self.data_dir / "heart_disease_uci"),
                "/srv/fedward": str(self.root / f"hospital-{name}" / "srv-fedward")}

    def run_block(self, block: Block, cwd: Path, name: str = "", timeout: float = 120) -> list[subprocess.CompletedProcess]:
        cwd.mkdir(parents=True, exist_ok=True)
        done = []
        for line in block.lines:
            if line.startswith(("fedward superlink", "fedward supernode")):
                log = (self.root / f"{name}.log").open("w")
                self.background[name] = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=self.env,
                                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                continue
            result = subprocess.run(["bash", "-c", line], cwd=cwd, env=self.env, capture_output=True, text=True,
                                    timeout=timeout)
            assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            done.append(result)
        return done

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=120)

    def online(self) -> int:
        return self.flwr("supernode", "ls", "consortium", "--format", "json").stdout.count('"online"')

    def wait_online(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.online() < count:
            assert time.monotonic() < deadline, f"fewer than {count} SuperNodes online"
            time.sleep(2)

    def wait_port(self, port: int, name: str) -> None:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and self.background[name].poll() is None, self.log(name)[-3000:]
            time.sleep(0.5)

    def stop_all(self) -> None:
        for process in self.background.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def hostile_app(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text((PROJECT_ROOT / "pyproject.toml").read_text().replace(
        'clientapp = "client.app:app"', 'clientapp = "steal:app"'))
    (folder / "steal.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                     "from flwr.clientapp import ClientApp\napp = ClientApp()\n")


@pytest.fixture
def deployment(tmp_path: Path, data_dir: Path):
    deployed = Deployment(tmp_path, data_dir)
    try:
        yield deployed
    finally:
        deployed.stop_all()


@pytest.mark.slow
def test_the_runbook_as_written_on_loopback(deployment: Deployment, tmp_path: Path):
    d = deployment
    op = d.common
    d.run_block(find("Operator", "fedward certs init").substituted(op), d.operator)
    d.run_block(find("Operator", "mkdir -p /var/lib/fedward").substituted(op), d.operator, "superlink")
    d.wait_port(d.port, "superlink")
    (d.home / "config.toml").write_text(find("Operator", "[superlink]").substituted(op).text)
    node_ids: dict[str, str] = {}
    for name in HOSPITALS:
        at = d.root / f"hospital-{name}"
        d.run_block(find("Hospital IT", "fedward certs hospital").substituted(d.hospital(name)), at)
        shutil.copy(at / "keys" / f"{name}.pub", d.operator)  # the hospital sends its public key
        shutil.copy(d.operator / "certs" / "ca.crt", at)  # and receives the CA certificate
        registered = d.run_block(find("Operator", "flwr supernode register").substituted(d.hospital(name)),
                                 d.operator)[0].stdout
        node_ids[name] = registered.split("SuperNode ")[1].split()[0]  # the id the runbook says to note
        d.run_block(find("Hospital IT", "mkdir -p /srv/fedward").substituted(d.hospital(name)), at, f"node-{name}")
    d.wait_online(3, timeout=120)
    listed = json.loads(d.flwr("supernode", "ls", "consortium", "--format", "json").stdout)["nodes"]
    assert {n["node-id"] for n in listed if n["status"] == "online"} == set(node_ids.values())

    # The runbook's run: fedward run exits 0 only for a completed run, and records its status.
    (launched,) = d.run_block(find("Operator", "mkdir -p /srv/fedward/runs").substituted(op), d.operator,
                              timeout=900)[1:]
    out = Path(op["/srv/fedward"]) / "runs" / "r1"
    status = json.loads((out / "run-status.json").read_text())
    assert status["status"] == "finished:completed" and status["completed"], status
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["hospitals"]) == set(HOSPITALS) and card["rounds"] == 5
    assert "finished:completed" in launched.stdout

    # Item 4: at the address hospitals use, only the Fleet API answers.
    (d.home / "config.toml").write_text(
        (d.home / "config.toml").read_text()
        + f'\n[superlink.outside]\naddress = "{PUBLIC_NAME}:{d.port}"\n'
          f'root-certificates = "{d.operator / "certs" / "ca.crt"}"\n')
    shutil.copy(d.root / "hospital-va" / "keys" / "va.pub", d.operator / "intruder.pub")
    d.run_block(Block("bash", "fedward certs hospital intruder --out keys", "x"), d.root / "intruder")
    for args in (("supernode", "register", str(d.root / "intruder" / "keys" / "intruder.pub"), "outside"),
                 ("ls", "outside"), ("supernode", "ls", "outside")):
        refused = d.flwr(*args)
        assert refused.returncode != 0 and "404" in refused.stdout + refused.stderr, (args, refused.stdout[-1500:])
    with socket.socket() as sock:  # the control port is bound to 127.0.0.1 alone
        assert sock.connect_ex((PUBLIC_NAME, d.control_port)) != 0
    assert d.flwr("ls", "consortium").returncode == 0, "the operator's commands still work"
    assert "intruder" not in d.flwr("supernode", "ls", "consortium", "--format", "json").stdout

    # Item 0: a bundle naming a ClientApp of its own runs nowhere; the launcher says the run failed.
    marker = tmp_path / "stolen"
    hostile_app(tmp_path / "hostile", marker)
    hostile_out = tmp_path / "hostile-run"
    result = subprocess.run(
        [str(BIN / "fedward"), "run", str(tmp_path / "hostile"), "consortium", "--run-config",
         f'data-path="" num-server-rounds=1 min-hospitals=3 round-timeout=60 out-dir="{hostile_out}"'],
        cwd=d.operator, env=d.env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "finished:failed" in result.stderr, result.stderr[-3000:]
    assert not marker.exists(), "the bundle's own ClientApp ran at a hospital"
    for name in HOSPITALS:
        assert "refused the run's app bundle" in d.log(f"node-{name}") and "'steal:app'" in d.log(f"node-{name}")
    hostile_status = json.loads((hostile_out / "run-status.json").read_text())
    assert hostile_status["completed"] is False
    assert "(3 answered with an error)" in hostile_status["details"], "a true reason, not a timeout"

    # Item 2: a bad row's text stays at the hospital: nowhere in the operator's launcher output, the
    # SuperLink's log (where the ServerApp runs) or the run directory; in the hospital's own log.
    secret = "PATIENT-4E2D-SECRET"
    va_data = d.root / "va-data" / "processed.va.data"
    va_data.write_text(va_data.read_text() + f"{secret},1,4,140,260,0,1,112,1,3,2,?,?,2\n")
    bad_out = tmp_path / "bad-row-run"
    result = subprocess.run(
        [str(BIN / "fedward"), "run", str(PROJECT_ROOT), "consortium", "--run-config",
         f'data-path="" num-server-rounds=1 min-hospitals=3 round-timeout=120 out-dir="{bad_out}"'],
        cwd=d.operator, env=d.env, capture_output=True, text=True, timeout=600)
    seen_by_server = result.stdout + result.stderr + d.log("superlink") + "".join(
        p.read_text(errors="replace") for p in bad_out.rglob("*") if p.is_file())
    assert secret not in seen_by_server and str(va_data) not in seen_by_server
    assert "hospital va: bad-data: 1 row of processed.va.data could not be read" in seen_by_server
    assert secret in d.log("node-va"), "the hospital's own log keeps the detail"

    # Item 6: kill -9 of fedward supernode takes Flower's SuperNode and the executor with it ...
    wrapper = d.background["node-va"]
    tied = children(wrapper.pid)
    assert len(tied) == 2, tied
    os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in tied):
        assert time.monotonic() < deadline, [pid for pid in tied if alive(pid)]
        time.sleep(0.2)
    # ... and the hospital restarted at once is activated again (retrying while Flower
    # still holds its previous session), with no exit 305.
    d.run_block(find("Hospital IT", "mkdir -p /srv/fedward").substituted(d.hospital("va")), d.root / "hospital-va",
                "node-va-again")
    deadline = time.monotonic() + 240
    while ACTIVATED not in d.log("node-va-again"):
        assert time.monotonic() < deadline and d.background["node-va-again"].poll() is None, \
            d.log("node-va-again")[-3000:]
        time.sleep(1)
    assert "Exit Code: 305" not in d.log("node-va-again") or "trying again" in d.log("node-va-again")
