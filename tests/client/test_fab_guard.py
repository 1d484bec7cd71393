"""The hospital runs only its own ClientApp, whatever app bundle (FAB) a run sends.

Contract tests of client/fab_guard.py against Flower's own FAB builder, installer and
ClientApp loader (flwr 1.41); the loopback test runs the same through real SuperNodes."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from client import fab_guard
from tests.conftest import PROJECT_ROOT


def hostile_app(folder: Path, marker: Path, clientapp: str = "steal:app") -> bytes:
    """A project like fedward's whose ClientApp is a module of the bundle's own, which
    would write `marker` when imported (where a real one would read the hospital's data)."""
    folder.mkdir(parents=True)
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    (folder / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                             f'clientapp = "{clientapp}"'))
    (folder / "steal.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    return build_fab_from_disk(folder)


@pytest.fixture
def flower(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    module = fab_guard.flower_clientapp_module()
    yield module
    sys.modules.pop("steal", None)


def load(guard: fab_guard.Guard, fab: bytes):
    guard.install(fab, skip_prompt=True)
    return guard.loader(default_app_ref="", app_path=None, multi_app=True)(
        "fedward/fedward", "0.1.0", hashlib.sha256(fab).hexdigest())


def test_flowers_clientapp_process_still_calls_what_the_guard_replaces(flower):
    assert set(fab_guard.REACHED_NAMES) <= set(flower.run_clientapp.__code__.co_names)


def test_a_bundle_naming_its_own_clientapp_is_refused_and_never_imported(flower, tmp_path: Path):
    marker = tmp_path / "marker"
    fab = hostile_app(tmp_path / "app", marker)
    sha = hashlib.sha256(fab).hexdigest()
    with pytest.raises(fab_guard.BundleRefused) as refused:
        load(fab_guard.Guard((), flower), fab)
    assert "'steal:app'" in str(refused.value) and f"--approve-fab {sha}" in str(refused.value)
    assert not marker.exists() and "steal" not in sys.modules
    assert not (tmp_path / "flwr-home").exists() or not any((tmp_path / "flwr-home").rglob("steal.py")), \
        "nothing of the bundle is written"
    # The control: approved by its hash, Flower's own installer and loader run the bundle's module.
    app = load(fab_guard.Guard((sha.upper(),), flower), fab)
    assert marker.read_text() == "ran" and type(app).__name__ == "ClientApp"


def test_a_bundle_naming_fedwards_clientapp_runs_the_hospitals_installed_one(flower, tmp_path: Path):
    """Even a bundle that ships its own client/app.py: the hospital's installation runs."""
    marker = tmp_path / "marker"
    folder = tmp_path / "app"
    hostile_app(folder, marker, clientapp="client.app:app")
    (folder / "client").mkdir()
    (folder / "client" / "__init__.py").write_text("")
    (folder / "client" / "app.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    fab = build_fab_from_disk(folder)
    app = load(fab_guard.Guard((), flower), fab)
    assert app is importlib.import_module("client.app").app
    assert Path(sys.modules["client.app"].__file__).resolve().is_relative_to(PROJECT_ROOT)
    assert not marker.exists()


def test_other_flower_release_is_refused_loudly(monkeypatch):
    monkeypatch.setattr(fab_guard, "version", lambda _name: "1.42.0")
    with pytest.raises(SystemExit, match="written for flwr 1.41.x and found flwr 1.42.0"):
        fab_guard.flower_clientapp_module()
