"""A hospital runs only its own ClientApp, whatever app bundle (FAB) a run names.

A run carries a FAB built by the operator (`flwr run .`), and Flower's
`flwr-clientapp` installs it and imports the ClientApp its `pyproject.toml` names
(`[tool.flwr.app.components] clientapp`) from the bundle's own folder: code the
server chose, running next to the patient data. Flower's `--trusted-entities`
check covers only apps fetched from Flower Hub (FIELD_NOTES), so it cannot
serve an offline consortium.

Here, in each ClientApp process, before Flower's `run_clientapp` runs:
- the bundle's SHA-256 is computed from its bytes (not taken from the run);
- a bundle the hospital approved by that hash (`fedward supernode --approve-fab`)
  is installed and loaded as Flower does;
- any other bundle is not installed and none of its files is imported: if it
  names fedward's ClientApp (`client.app:app`), the one installed at the hospital
  runs; if it names any other, the message is refused with an error reply, and
  the hospital's log names the bundle's hash and the flag that would approve it.

The reach into Flower (the two names `run_clientapp` calls, `install_from_fab`
and `get_load_client_app_fn`, replaced in that module for this process only)
lives here alone, is checked against the flwr release it was written for, and
`tests/client/test_fab_guard.py` is its contract test.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

FLOWER_VERSION = "1.41."
OWN_CLIENTAPP = "client.app:app"
FLOWER_MODULE = "flwr.supernode.runtime.run_clientapp"
REACHED_NAMES = ("install_from_fab", "get_load_client_app_fn")


class BundleRefused(Exception):
    """Raised inside Flower's ClientApp process: Flower answers the message with an error."""


def flower_clientapp_module() -> ModuleType:
    found = version("flwr")
    if not found.startswith(FLOWER_VERSION):
        raise SystemExit(
            f"client.fab_guard was written for flwr {FLOWER_VERSION}x and found flwr {found}: check how "
            f"{FLOWER_MODULE}.run_clientapp installs and loads the app bundle, then update this module"
        )
    module = importlib.import_module(FLOWER_MODULE)
    missing = [name for name in REACHED_NAMES if name not in module.run_clientapp.__code__.co_names]
    if missing:
        raise SystemExit(f"{FLOWER_MODULE}.run_clientapp no longer calls {missing}; update client.fab_guard")
    return module


def bundle_clientapp(content: bytes) -> str:
    """The ClientApp reference a FAB's pyproject.toml names, read without extracting anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            config = tomllib.loads(bundle.read("pyproject.toml").decode())
        return str(config["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise BundleRefused(f"the run's app bundle has no readable clientapp entry ({type(err).__name__})") from None


class Guard:
    """The decision for one ClientApp process: `install` is given the bundle's bytes first,
    then `loader` says what runs."""

    def __init__(self, approved: Iterable[str], flower: ModuleType) -> None:
        self.approved = frozenset(sha.lower() for sha in approved)
        self._flower_install = flower.install_from_fab
        self._flower_loader = flower.get_load_client_app_fn
        self.bundle_approved = False

    def install(self, fab: bytes, *args: Any, **kwargs: Any) -> Path:
        sha = hashlib.sha256(fab).hexdigest()
        if sha in self.approved:
            self.bundle_approved = True
            print(f"fedward: running the run's app bundle {sha}, approved by this hospital", file=sys.stderr)
            return Path(self._flower_install(fab, *args, **kwargs))
        named = bundle_clientapp(fab)
        if named != OWN_CLIENTAPP:
            raise BundleRefused(
                f"refused the run's app bundle (sha256 {sha}): it names the ClientApp {named!r}, and this "
                f"hospital runs only its own {OWN_CLIENTAPP}. Code in an app bundle runs only if the "
                f"hospital approves that exact bundle: fedward supernode ... --approve-fab {sha}"
            )
        return Path()  # nothing of the bundle is written or imported

    def loader(self, *args: Any, **kwargs: Any) -> Callable[[str, str, str], Any]:
        if self.bundle_approved:
            return self._flower_loader(*args, **kwargs)

        def own_clientapp(_fab_id: str, _fab_version: str, _fab_hash: str) -> Any:
            from client.app import app

            return app

        return own_clientapp


def run_guarded_clientapp(approved: Iterable[str], **request: Any) -> None:
    """Flower's `run_clientapp(**request)`, with the bundle checked and loaded by a Guard."""
    flower = flower_clientapp_module()
    guard = Guard(approved, flower)
    flower.install_from_fab = guard.install  # type: ignore[attr-defined]
    flower.get_load_client_app_fn = guard.loader  # type: ignore[attr-defined]
    flower.run_clientapp(**request)


def main(argv: list[str] | None = None) -> None:
    """`flwr-clientapp`'s arguments, plus --approve-fab: one fresh process per message."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clientappio-api-address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--approve-fab", action="append", default=[], metavar="SHA256")
    args = parser.parse_args(argv)
    certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    run_guarded_clientapp(args.approve_fab, runtime_api_address=args.clientappio_api_address, token=args.token,
                          insecure=args.insecure, certificates=certificates, parent_pid=args.parent_pid,
                          runtime_dependency_install=False)


if __name__ == "__main__":
    main()
