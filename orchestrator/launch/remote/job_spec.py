"""One training run as a remote job, shared by Ray Jobs and KubeRay: its entrypoint, its config,
and where its record will be."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import storage
from orchestrator.config import TrainConfig
from orchestrator.runs.tracking import wandb_run_id

# `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default, 3 s, is too
# short for the workers to write a checkpoint: 244 MB for the paper net).
STOP_WAIT_S = 300


@dataclass
class Job:
    """One training run as a Ray job: the entrypoint and the config it will run with."""

    config: TrainConfig
    entrypoint: str

    @property
    def run_url(self) -> str:
        return storage.join(self.config.storage.url, self.config.run_name)

    def where(self) -> list[str]:
        c = self.config
        mode = c.logger.mode or "online if WANDB_API_KEY is set on the cluster, else offline"
        return [
            f"  run folder  {self.run_url}",
            f"  W&B         project {c.logger.project}, run id {wandb_run_id(c.storage.url, c.run_name)} ({mode})",
        ]
