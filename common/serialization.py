"""Model weights <-> Flower ArrayRecords; the `_module.` prefix never leaves."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from common.errors import ModelMismatch

_OPACUS_PREFIX = "_module."
# Secure rounds send weights as a legacy FitIns (a list, no names): this run-config entry
# carries their names, newline-separated, in order.
ARRAY_KEYS = "fedward-array-keys"


def to_arrays(module: torch.nn.Module) -> ArrayRecord:
    state = {
        key.removeprefix(_OPACUS_PREFIX): value.detach().cpu()
        for key, value in module.state_dict().items()
    }
    return ArrayRecord(state)


def shape_mismatch(expected: dict[str, tuple[int, ...]], held: dict[str, tuple[int, ...]]) -> str:
    """"missing: ...; unexpected: ...; wrong shape: KEY (held) (model: (expected))" for weights that do not
    fit a model of `expected` shapes; "" when they fit."""
    missing, unexpected = sorted(set(expected) - set(held)), sorted(set(held) - set(expected))
    wrong = sorted(f"{k} {held[k]} (model: {expected[k]})" for k in set(expected) & set(held) if held[k] != expected[k])
    return "; ".join(f"{label}: {', '.join(items)}" for label, items in
                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items)


def load_arrays(module: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Load weights strictly; a mismatch names the keys and shapes that differ."""
    incoming = arrays.to_torch_state_dict()
    expected = module.state_dict()
    missing = sorted(set(expected) - set(incoming))
    unexpected = sorted(set(incoming) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(incoming) if expected[k].shape != incoming[k].shape
    )
    if missing or unexpected or wrong:
        raise ModelMismatch(
            "the received weights do not fit this task's model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); "
            "server and hospital must run the same fedward version and task settings"
        )
    module.load_state_dict(incoming, strict=True)
