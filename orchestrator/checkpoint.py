"""What a checkpoint holds, and how it is written and read. Everything is plain tensors and
Python values, so it loads with torch.load(weights_only=True): no code runs on load."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch

STATE_FILE = "state.pt"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save(folder: str, **state: Any) -> str:
    """Model (placement-independent keys), optimizer, schedule, position and config."""
    path = os.path.join(folder, STATE_FILE)
    torch.save(_to_cpu(state), path)
    return path


def load(folder_or_file: str) -> dict[str, Any]:
    path = folder_or_file
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def stage() -> str:
    """A new local folder to write one checkpoint into before it is handed on."""
    return tempfile.mkdtemp(prefix="alexnet-checkpoint-")


def discard(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
