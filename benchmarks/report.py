"""Shared by the benchmark scripts: machine facts, and one Markdown section per script.

Each script calls `write_section(name, rows, columns, notes)`; the section
`## name` in docs/benchmarks.md is replaced (others are kept), headed by the
command that produced it, the date, the machine and the library versions.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh the section.\n"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}
    for package in ("torch", "flwr", "opacus", "numpy"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["cuda"] = None
    return info


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def write_section(
    name: str, rows: list[dict[str, Any]], columns: list[str], notes: str = "",
    facts: dict[str, Any] | None = None, command: str | None = None,
) -> None:
    """`facts`/`command` default to this machine and this process (override them when
    rendering results measured elsewhere, e.g. on a GPU machine)."""
    facts = facts or machine()
    command = command or " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        f"## {name}", "",
        f"`{command}`, {dt.date.today().isoformat()}; " + ", ".join(f"{k} {v}" for k, v in facts.items()), "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
    if notes:
        lines += ["", notes.strip()]
    section = "\n".join(lines) + "\n"
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
