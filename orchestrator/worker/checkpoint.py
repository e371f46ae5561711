"""What a checkpoint holds, and how it is written and read. Everything is plain tensors and
Python values, so it loads with torch.load(weights_only=True): no code runs on load."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

import torch

from orchestrator.runs.folder import CHECKSUM_FILE, STATE_FILE
from shards.manifest import sha256_of

try:
    from torch.utils.serialization import config as serialization_config
except ImportError:  # an older torch, whose torch.save always writes the CRC32s
    serialization_config = None


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _without_zip_crc() -> contextlib.AbstractContextManager:
    """torch.save without the zip format's CRC32 per record: torch.load does not check them and
    the sha256 written beside the file is what `intact` checks. The paper net's 488 MB are saved
    in 0.31 s instead of 0.40 here, time the ranks wait at each checkpoint."""
    if serialization_config is None:
        return contextlib.nullcontext()
    return serialization_config.patch({"save.compute_crc32": False})


def save(folder: str, **state: Any) -> str:
    """Model (placement-independent keys), optimizer, schedule, position and config."""
    path = os.path.join(folder, STATE_FILE)
    with _without_zip_crc():
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


STAGING = os.path.join(tempfile.gettempdir(), "alexnet-staging")


def staging_root(run_name: str) -> str:
    """Where this machine stages the run's checkpoints before upload: one known place per run,
    so whatever a dead process left there can be found and removed."""
    return os.path.join(STAGING, run_name.replace(os.sep, "_"))


def stage(run_name: str) -> str:
    """A new local folder to write one checkpoint into before it is uploaded, named after this
    process (`clear_stale` tells a dead one's leftovers by that); `discard` removes it after the
    upload, whether the upload succeeded or not."""
    root = staging_root(run_name)
    while True:
        os.makedirs(root, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another process removed it while empty
            return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clear_stale() -> None:
    """Remove the staged checkpoints of dead processes on this machine (a worker killed
    mid-upload, a restarted job), each a whole checkpoint (244 MB for the paper net), of every
    run: a sweep trial stopped by its scheduler never starts again to clear its own."""
    for run in os.listdir(STAGING) if os.path.isdir(STAGING) else []:
        root = os.path.join(STAGING, run)
        for name in os.listdir(root) if os.path.isdir(root) else []:
            pid = name.split("-", 1)[0]
            if not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        _remove_if_empty(root)


def discard(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _remove_if_empty(os.path.dirname(folder))


def _remove_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):  # not empty: another checkpoint of the run is staged there
        os.rmdir(folder)
