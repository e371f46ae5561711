"""The Cluster adapter for plain torch.distributed: torchrun-style launches, the GPU check and
the tests run the Trainer through it, without Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from orchestrator import storage
from orchestrator.config import ConfigError
from orchestrator.runs.folder import CHECKPOINT_PREFIX, RunFolder
from orchestrator.worker import checkpoint
from orchestrator.worker.cluster import Cluster, newest_intact
from orchestrator.worker.signals import Signals, describe

log = logging.getLogger(__name__)


def local_devices(gpus: int, local_rank: int = 0) -> list[torch.device]:
    """This process's devices: `gpus` CUDA devices from local_rank x gpus on, else the CPU. A
    lone process on a machine with fewer GPUs runs both towers on them (cuda:0 twice)."""
    count = torch.cuda.device_count()
    if gpus < 1 or count == 0:
        return [torch.device("cpu")]
    first = local_rank * gpus
    if local_rank > 0 and first + gpus > count:
        raise ConfigError(
            f"process {local_rank} would need GPUs {first}-{first + gpus - 1} but this machine has {count}; "
            "lower cluster.gpus_per_worker or the number of processes"
        )
    return [torch.device("cuda", (first + i) % count) for i in range(gpus)]


class TorchCluster(Cluster):
    """Plain torch.distributed. Rank and world come from torchrun's environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or are given. The process group is NCCL when the
    worker has GPUs, else gloo, and is set up even for one process, so the collectives that
    training makes are the ones a multi-node run makes. Checkpoints go to the run's folder as
    checkpoint_<step>/, the newest `keep` kept; `best/` is a copy of one of them."""

    def __init__(self, folder: RunFolder, gpus_per_worker: int, keep: int, rank: int | None = None,
                 world: int | None = None, backend: str | None = None) -> None:  # fmt: skip
        self.folder, self.keep = folder, keep
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
        local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.devices = local_devices(gpus_per_worker, local_rank)
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            if self.devices[0].type == "cuda":
                torch.cuda.set_device(self.devices[0])
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(
                backend or ("nccl" if self.devices[0].type == "cuda" else "gloo"),
                rank=self.rank,
                world_size=self.world,
                timeout=timedelta(minutes=10),
            )
        # Ctrl-C reaches every process of the terminal's group; torchrun forwards SIGTERM.
        self.signals = Signals(self._on_signal) if threading.current_thread() is threading.main_thread() else None

    def _on_signal(self, signum: int) -> None:
        if self.rank == 0:
            log.warning("%s: checkpointing at this step and stopping (again to stop at once)", describe(signum))

    def stop_requested(self) -> bool:
        return self.signals is not None and self.signals.received

    def report(self, metrics: dict[str, float], folder: str | None, best: bool = False) -> None:
        if folder is None:
            return
        step = int(metrics["step"])
        url = self.folder.path(f"{CHECKPOINT_PREFIX}{step:09d}")
        try:
            storage.put_dir(folder, url, self.folder.options)
        finally:  # uploaded or not, the staged copy must not pile up on the disk
            checkpoint.discard(folder)
        if best:
            storage.copy_dir(url, self.folder.best_url, self.folder.options)
        for old in self.folder.checkpoints()[: -self.keep]:
            storage.remove_dir(self.folder.path(old), self.folder.options)

    def restored_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        return newest_intact(self.folder, self.folder.checkpoints()[::-1])

    def close(self) -> None:
        if self.signals is not None:
            self.signals.restore()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
