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

import hydra
from omegaconf import DictConfig

from orchestrator.config import ConfigError, register
from orchestrator.launch.prepare import prepare
from orchestrator.launch.torchrun import fit
from orchestrator.logs import setup as setup_logging
from orchestrator.worker.signals import exit_code

register()

log = logging.getLogger("orchestrator.local")


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
