"""A hospital's processes die together: each child of `fedward supernode` asks Linux
to SIGKILL it when its parent dies (`prctl(PR_SET_PDEATHSIG)`), so a `kill -9` of the
wrapper cannot leave Flower's SuperNode online, or an executor running, without it."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGKILL this process when its parent thread exits. If the parent is already gone
    (or is not `expected_parent`: we were re-parented before the call), exit now."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
