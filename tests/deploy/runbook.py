"""The runbook's own commands: the `bash` and `toml` blocks of deploy/README.md, in order,
with host names, ports, folders and the hospital's name substituted for a loopback run.
`sh` blocks (install, SSH tunnel, Docker) are shown to readers and not run."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.conftest import PROJECT_ROOT

RUNBOOK = PROJECT_ROOT / "deploy" / "README.md"
FENCE = re.compile(r"^[ \t]*```(bash|toml)[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    kind: str  # bash | toml
    text: str
    section: str  # "Operator" or "Hospital IT"

    @property
    def lines(self) -> list[str]:
        joined = self.text.replace("\\\n", " ")
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]

    def substituted(self, names: dict[str, str]) -> Block:
        text = self.text
        for old, new in names.items():
            text = text.replace(old, new)
        return Block(self.kind, text, self.section)


def blocks() -> list[Block]:
    text = RUNBOOK.read_text()
    sections = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.MULTILINE)]
    found = []
    for match in FENCE.finditer(text):
        section = [name for start, name in sections if start < match.start()][-1]
        body = "\n".join(line.strip() for line in match.group(2).splitlines())
        found.append(Block(match.group(1), body, section))
    return found


def find(section: str, first_command: str) -> Block:
    """The one block of `section` whose first line starts with `first_command`."""
    matches = [b for b in blocks() if b.section == section and b.lines and b.lines[0].startswith(first_command)]
    assert len(matches) == 1, f"deploy/README.md, {section}: expected one block starting {first_command!r}"
    return matches[0]
