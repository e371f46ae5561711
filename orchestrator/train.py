"""python -m orchestrator.train [overrides]: compose and check the config, start or join Ray, run
one Ray Train job (DDP across workers, the two-tower AlexNet across each worker's GPUs)."""

from __future__ import annotations

import logging
import math
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.alexnet_orchestrator.ray_tune_launcher import RayTuneLauncher
from orchestrator.config import (
    ConfigError,
    absolute,
    public_config,
    register,
)
from orchestrator.launch.naming import in_multirun, job_names
from orchestrator.launch.overrides import override_problem
from orchestrator.launch.prepare import prepare
from orchestrator.launch.ray_job import connect, execute
from orchestrator.launch.stops import STOPS
from orchestrator.launch.summary import TrainingFailed
from orchestrator.logs import setup as setup_logging
from orchestrator.runs.folder import RunFolder
from orchestrator.sweeps.trials import collect
from orchestrator.worker.signals import exit_code

register()
Plugins.instance().register(RayTuneLauncher)  # `hydra/launcher: ray_tune`: see orchestrator.config.register

log = logging.getLogger("orchestrator.train")


def run(cfg: DictConfig) -> float | None:
    """One job: its best val top-1; None for a sweep's job, which the launcher runs as a Tune
    trial once every job of the sweep is prepared."""
    setup_logging()
    config = prepare(cfg)
    connect(config)  # one Ray for the run, or for all of a sweep's trials
    STOPS.install()  # after ray.init, which sets a SIGTERM handler of its own
    if in_multirun() and collect(HydraConfig.get().job.num, config):
        return None
    return execute(config)


def record_failure(cfg: DictConfig, error: str) -> None:
    """A sweep job that could not even start still gets a run folder saying why."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        name, _ = job_names(config["run_name"], config["logger"]["group"])
        folder = RunFolder.at(absolute(config["storage"]["url"]), name, config["storage"]["options"])
        folder.write_config(public_config(config))
        folder.event("failed", error=error)
        folder.drain()
    except (OmegaConfBaseException, OSError, KeyError, TypeError):
        log.error("(the failure could not be recorded in storage either)")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job is recorded and the sweep goes on (its objective is NaN).
    try:
        return run(cfg)
    except (ConfigError, TrainingFailed) as err:
        log.error("%s", err)
        if in_multirun():
            if isinstance(err, ConfigError):
                record_failure(cfg, str(err))
            return math.nan
        sys.exit(2 if isinstance(err, ConfigError) else 1)


def cli() -> None:
    setup_logging()
    problem = override_problem(sys.argv[1:])
    if problem:
        log.error("%s", problem)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C (or an interrupt before Ray ran): at once
        log.error("stopped at once; resume=true continues from the run's last checkpoint")
        sys.exit(exit_code(STOPS.signum or signal.SIGINT))
    if STOPS.signum is not None:  # stopped with a checkpoint: a shell and a scheduler see why
        sys.exit(exit_code(STOPS.signum))


if __name__ == "__main__":
    cli()
