"""What a Trainer knows of the cluster it runs in: its rank, the world size, its devices, one
collective (a sum over ranks), and where checkpoints go and come back from. Two adapters: Ray
Train's (orchestrator/ray_cluster.py) and plain torch.distributed (`TorchCluster`, here: a
torchrun-style launch, the GPU check and the tests), so training runs, is tested and is
profiled without Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from orchestrator import checkpoint, storage
from orchestrator.config import ConfigError
from orchestrator.runs import CHECKPOINT_PREFIX, RunFolder
from orchestrator.stopping import Signals, describe

log = logging.getLogger(__name__)


class Cluster:
    """The interface. `rank`, `world` and `devices` are set by each adapter."""

    rank: int = 0
    world: int = 1
    devices: list[torch.device]

    @property
    def collective_device(self) -> torch.device:
        """The one rule for collectives: their tensors live on the device the process group
        serves. NCCL serves CUDA tensors only (a CPU tensor raises "No backend type associated
        with device type cpu"), so there it is this worker's first GPU; gloo reduces on the CPU."""
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            return self.devices[0]
        return torch.device("cpu")

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over all ranks, on the collective device (every rank calls it at the same step)."""
        values = values.to(self.collective_device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        return values

    def gather(self, value: object) -> list[object]:
        """Every rank's `value`, in rank order (a collective)."""
        if not (dist.is_available() and dist.is_initialized()):
            return [value]
        values: list[object] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def node(self) -> str:
        """The machine this worker runs on, as its cluster names it."""
        return socket.gethostname()

    def whereabouts(self) -> dict[str, object]:
        """Where this rank runs: its node, host and devices (GPU names included)."""
        devices = [f"{d} {torch.cuda.get_device_name(d)}" if d.type == "cuda" else str(d) for d in self.devices]
        return {"rank": self.rank, "node": self.node(), "host": socket.gethostname(), "devices": devices}

    def stop_requested(self) -> bool:
        """Whether this process was asked to stop; the Trainer makes all ranks agree on it."""
        return False

    def close(self) -> None:
        """Release what the adapter holds (signal handlers, watchers, the process group)."""

    def report(self, metrics: dict[str, float], folder: str | None, best: bool = False) -> None:
        """Every rank calls this at the same points; rank 0 passes a checkpoint folder (which
        the adapter then owns and removes), also kept as the run's best when `best`."""
        raise NotImplementedError

    def restored_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        """The newest checkpoint of this run as a local folder, or None for a fresh start."""
        raise NotImplementedError

    def wait_for_uploads(self, timeout_s: float) -> bool:
        """Return once every checkpoint handed to `report` is in storage (True), or after
        `timeout_s` (False). Adapters that upload inside `report` have nothing to wait for."""
        return True


@contextlib.contextmanager
def newest_intact(folder: RunFolder, names: list[str]) -> Iterator[str | None]:
    """The first intact checkpoint of `names` (newest first), downloaded into a local folder;
    each damaged one is named in a warning. None when there are no checkpoints at all; a
    ConfigError saying how to start over when every one is damaged."""
    damaged = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="alexnet-restore-") as local:
            storage.get_dir(folder.path(name), local, folder.options)
            if checkpoint.intact(local):
                if damaged:
                    log.warning(
                        "checkpoint %s of run %s is damaged (its state.pt does not match the checksum saved with "
                        "it); resuming from %s", ", ".join(damaged), folder.name, name,
                    )  # fmt: skip
                yield local
                return
        damaged.append(name)
    if damaged:
        raise ConfigError(
            f"every checkpoint of run {folder.name} is damaged ({', '.join(damaged)}); start over with another "
            f"run_name, or remove {folder.url}"
        )
    yield None


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
