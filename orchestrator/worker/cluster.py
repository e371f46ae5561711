"""What a Trainer knows of the cluster it runs in: its rank, the world size, its devices, one
collective (a sum over ranks), and where checkpoints go and come back from. Two adapters: Ray
Train's (orchestrator/launch/ray_worker.py) and plain torch.distributed (`TorchCluster`, torch_cluster.py: a
torchrun-style launch, the GPU check and the tests), so training runs, is tested and is
profiled without Ray."""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
from collections.abc import Iterator

import torch
import torch.distributed as dist

from orchestrator import storage
from orchestrator.config import ConfigError
from orchestrator.runs.folder import RunFolder
from orchestrator.worker import checkpoint

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
