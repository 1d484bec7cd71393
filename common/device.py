"""Where training runs: the hospital's GPU when it has one, else the CPU."""

from __future__ import annotations

import torch


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
