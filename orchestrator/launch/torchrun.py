"""One worker's whole run under plain torch.distributed (torchrun's environment, or given rank
and world): the Trainer Ray Train runs, with the TorchCluster adapter."""

from __future__ import annotations

import os
import time

import torch

from orchestrator.config import TrainConfig, public_config
from orchestrator.runs.folder import LAUNCHED, RunFolder
from orchestrator.worker.signals import exit_code
from orchestrator.worker.torch_cluster import TorchCluster
from orchestrator.worker.trainer import Trainer


def fit(config: TrainConfig, rank: int | None = None, world: int | None = None) -> int:
    """One worker's whole run; rank and world default to torchrun's environment. Returns the
    exit code: 0, or 130/143 when Ctrl-C/SIGTERM stopped it (with a checkpoint there)."""
    world = world or int(os.environ.get("WORLD_SIZE", 1))
    # The global batch (and a linearly scaled lr) counts the processes started; each takes its
    # share of this machine's GPUs unless told (2 at most: the paper's split).
    config.cluster.nodes = world
    if config.cluster.gpus_per_worker is None:
        per_process = torch.cuda.device_count() // int(os.environ.get("LOCAL_WORLD_SIZE", world))
        config.cluster.gpus_per_worker = min(2, per_process)
    folder = RunFolder.of(config)
    cluster = TorchCluster(folder, config.cluster.gpus_per_worker, config.checkpoint.keep, rank, world)
    try:
        if cluster.rank == 0:
            folder.write_config(public_config(config))
            folder.event(LAUNCHED, workers=world, until_epoch=config.until_epoch)
        start = time.perf_counter()
        ended = Trainer(config, cluster).fit()
        if ended == "stopped":
            assert cluster.signals is not None and cluster.signals.signum is not None  # its only stop source
            return exit_code(cluster.signals.signum)
        if ended == "finished" and cluster.rank == 0:  # "paused" (until_epoch) says so itself
            folder.event("finished", seconds=round(time.perf_counter() - start, 1))
            folder.drain()
        return 0
    finally:
        cluster.close()
