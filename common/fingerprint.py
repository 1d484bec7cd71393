"""Content fingerprints of a hospital's data, the key of its privacy-ledger lines.

A file is hashed whole; a folder is hashed over every file under it, in path
order, each with its relative path. The digest is cached per process against the
files' sizes and modification times, so a round pays for hashing only when the
data changed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from common.errors import DataError

_CHUNK = 1 << 20


def fingerprint_text(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def fingerprint_path(path: str | Path) -> str:
    """sha256 of the data at `path` (file or folder); `builtin:` names hash as text."""
    text = str(path)
    if text.startswith("builtin:"):
        return fingerprint_text(text)
    root = Path(text)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(str(root), signature)


@functools.lru_cache(maxsize=16)
def _digest(root: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in signature:
        digest.update(os.path.relpath(name, root).encode() + b"\0")
        with open(name, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
