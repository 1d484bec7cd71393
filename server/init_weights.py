"""Start the global model from a checkpoint the operator supplies (run config `init-weights`).

Real consortia fine-tune a network pretrained elsewhere (ImageNet, a radiology
model), downloaded once. The file is a state dict of the task's model: PyTorch
(`.pt` / `.pth`, read with `torch.load(weights_only=True)`, which refuses
anything but tensors and containers: nothing is unpickled) or NumPy (`.npz`,
`allow_pickle=False`); fedward's own `final_model.pt` qualifies. Loading is
strict: a missing or unexpected key, or a shape that differs, is refused naming
each one, before any message is sent. The model card records the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import ConfigError
from common.serialization import shape_mismatch

SUFFIXES = (".pt", ".pth", ".npz")


@dataclass(frozen=True)
class InitWeights:
    path: Path
    sha256: str
    state: dict[str, torch.Tensor]

    def card(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256}


def read_init_weights(path_text: str) -> InitWeights:
    """The checkpoint's tensors and digest; ConfigError naming the file if it cannot serve."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"init-weights={path}: no such file; give the path of a .pt, .pth or .npz state dict")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"init-weights={path}: unknown format {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    raw = path.read_bytes()
    try:
        state = _npz(path) if path.suffix.lower() == ".npz" else _torch(path)
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"init-weights={path} is not a readable state dict ({first}); save one with "
            "torch.save(model.state_dict(), PATH) or numpy.savez(PATH, **arrays)"
        ) from None
    return InitWeights(path.resolve(), hashlib.sha256(raw).hexdigest(), state)


def apply_init_weights(model: nn.Module, init: InitWeights) -> None:
    """Load strictly into `model`; ConfigError naming every key and shape that does not fit."""
    expected = model.state_dict()
    mismatch = shape_mismatch({k: tuple(v.shape) for k, v in expected.items()},
                              {k: tuple(v.shape) for k, v in init.state.items()})
    if mismatch:
        raise ConfigError(
            f"init-weights={init.path} does not fit this run's model ({mismatch}); check task, model, "
            "image-size and the data's classes"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in init.state.items()}, strict=True)


def _torch(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError("the file holds no mapping of names to tensors")
    return {str(k): v for k, v in loaded.items()}


def _npz(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path, allow_pickle=False) as arrays:
        return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}
