"""python -m orchestrator.local [overrides]: training without Ray, under plain torch.distributed.

One process is one worker (two GPUs when it has them); several come from torchrun, which sets
RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT:

    torchrun --nproc-per-node=4 -m orchestrator.local cluster.gpus_per_worker=2 data.url=...

The Trainer is the one Ray Train runs; only the cluster adapter differs (TorchCluster). For
profiling, the GPU check, machines without Ray, and the tests."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import hydra
import torch
from omegaconf import DictConfig

from orchestrator.cluster import TorchCluster
from orchestrator.config import ConfigError, TrainConfig, public_config, register
from orchestrator.job import prepare
from orchestrator.logs import setup as setup_logging
from orchestrator.runs import LAUNCHED, RunFolder
from orchestrator.stopping import exit_code
from orchestrator.trainer import Trainer

register()
log = logging.getLogger("orchestrator.local")


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
    folder = RunFolder(config.storage.url, config.run_name, config.storage.options)
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and cfg.run_name is None:
            raise ConfigError("several processes must name one run; add run_name=<name> to the command")
        config = prepare(cfg)
        code = fit(config)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, the run keeps its last checkpoint
        log.error("stopped at once; resume=true continues from the run's last checkpoint")
        sys.exit(exit_code(signal.SIGINT))
    sys.exit(code)


if __name__ == "__main__":
    main()
