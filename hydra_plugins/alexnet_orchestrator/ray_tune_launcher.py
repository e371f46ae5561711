"""Hydra's launcher for this project's sweeps: every job of a multirun becomes a Ray Tune trial
(orchestrator/sweeps/). It lives here because hydra-core instantiates launchers only from the
`hydra_plugins` namespace; selected by `hydra/launcher: ray_tune` (conf/train.yaml).

Each job first goes through Hydra's own `run_job` (its overrides, output folder, job name) and
the project's checks; instead of training there, the task hands its prepared config over; then
all of them run as Tune trials at once, and each job's objective (best val top-1) returns to
Hydra, so sweepers that read it (Optuna) work as with the basic launcher.

(No `from __future__ import annotations` here: Hydra loads plugin modules without registering
them in sys.modules, and dataclasses then cannot resolve string annotations.)"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayTuneLauncherConf:
    _target_: str = "hydra_plugins.alexnet_orchestrator.ray_tune_launcher.RayTuneLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="ray_tune", node=RayTuneLauncherConf, provider="alexnet")


class RayTuneLauncher(Launcher):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from orchestrator.sweeps import sweep, trials

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: list[JobReturn] = []
        with trials.collecting() as prepared:
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
                returns.append(
                    run_job(
                        hydra_context=self.hydra_context,
                        task_function=self.task_function,
                        config=sweep_config,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                )
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        objectives = sweep.run_trials(prepared, str(self.config.hydra.sweep.dir))
        for idx, ret in enumerate(returns, start=initial_job_idx):
            if idx in objectives and ret.status == JobStatus.COMPLETED:
                ret.return_value = objectives[idx]
        return returns
