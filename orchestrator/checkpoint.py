"""What a checkpoint holds, and how it is written and read. Everything is plain tensors and
Python values, so it loads with torch.load(weights_only=True): no code runs on load."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch

from shards.manifest import sha256_of

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.sha256"  # written with state.pt; a copy that does not match is damaged


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
    with open(path, "rb") as f:
        digest = sha256_of(f)
    with open(os.path.join(folder, CHECKSUM_FILE), "w") as f:
        f.write(digest + "\n")
    return path


def intact(folder: str) -> bool:
    """Whether state.pt is the file that was saved: it matches the checksum recorded then (a
    partial copy, bit rot or a truncation does not). Checkpoints from before checksums were
    recorded cannot be checked and count as intact."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return False
    try:
        with open(os.path.join(folder, CHECKSUM_FILE)) as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        return True
    with open(path, "rb") as f:
        return sha256_of(f) == recorded


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
