"""docker-compose.yml checked by a real compose implementation (no Docker engine here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)")


def command(service: dict) -> str:
    value = service["command"]
    return value if isinstance(value, str) else " ".join(value)


def mounts(service: dict) -> dict[str, str]:
    """target -> source, from either volume syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


def compose(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COMPOSE, "-f", str(path), *args], capture_output=True, text=True, timeout=60,
                          env={"FEDWARD_DATA_DIR": "/srv/data", "PATH": "/usr/bin:/bin"}, cwd=path.parent)


def test_compose_file_is_valid_and_has_the_federation():
    result = compose(PROJECT_ROOT / "docker-compose.yml", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"certs", "superlink", "register", "run"} <= set(services)
    hospitals = {name: s for name, s in services.items() if name.startswith("hospital-")}
    assert len(hospitals) == 3
    link = command(services["superlink"])
    assert "fedward superlink --certs /certs" in link and "--insecure" not in link
    keys, data = set(), set()
    for service in hospitals.values():
        line = command(service)
        assert "--ca /certs/ca.crt" in line and "--insecure" not in line
        keys.add(line.split("--key ")[1].split()[0])
        data.update(src for target, src in mounts(service).items() if target.startswith("/data/"))
    assert len(keys) == 3 and len(data) == 3  # each hospital: its own key and its own data
    ledgers = set()
    for service in hospitals.values():  # each keeps its privacy ledger on a volume of its own
        ledger = command(service).split("--ledger ")[1].split()[0]
        ledgers.add(mounts(service)[str(Path(ledger).parent)])
    assert len(ledgers) == 3
    assert all(path.startswith("/srv/data/heart_disease_uci/") for path in data)
    assert "/state" in mounts(services["superlink"])



def test_compose_keeps_the_control_api_on_the_superlinks_loopback():
    """Only the Fleet port is published; the operator's one-shot services reach the control
    API through the superlink container's own loopback, where certs init's SAN 127.0.0.1 covers it."""
    services = yaml.safe_load(compose(PROJECT_ROOT / "docker-compose.yml", "config").stdout)["services"]
    link = services["superlink"]
    assert "--control-host" not in command(link) and "--control-port 9093" in command(link)
    assert [str(p.get("target") if isinstance(p, dict) else p).split(":")[-1] for p in link["ports"]] == ["9092"]
    for name in ("register", "run"):
        assert services[name]["network_mode"] == "service:superlink", name
    flwr_config = (PROJECT_ROOT / "deploy" / "compose" / "flwr-config.toml").read_text()
    assert 'address = "127.0.0.1:9093"' in flwr_config
    assert command(services["run"]).startswith("fedward run ")  # exits non-zero when the run fails


def test_validator_rejects_an_unknown_key(tmp_path: Path):
    text = (PROJECT_ROOT / "docker-compose.yml").read_text().replace("restart: unless-stopped", "restrat: always", 1)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text)
    (tmp_path / "deploy" / "compose").mkdir(parents=True)
    result = compose(broken, "config", "-q")
    assert result.returncode != 0 and "restrat" in result.stderr
