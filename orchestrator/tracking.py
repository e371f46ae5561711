"""Rank 0's record of a run: metrics.jsonl in the run's folder (always) and a W&B run (online
with WANDB_API_KEY, else offline; never blocking training). Other ranks get a NullTracker."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from orchestrator.config import TrainConfig, public_config
from orchestrator.runs import RunFolder

log = logging.getLogger(__name__)


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_run_id(storage_url: str, run_name: str) -> str:
    """Stable per run, so a resumed or restarted run appends to the same W&B run."""
    return hashlib.sha256(f"{storage_url}/{run_name}".encode()).hexdigest()[:16]


class Tracker:
    def __init__(self, config: TrainConfig, folder: RunFolder) -> None:
        self.folder = folder
        self.run = None
        mode = wandb_mode(config.logger.mode)
        if mode != "disabled":
            wandb_dir = folder.wandb_dir(config.logger.dir)
            os.makedirs(wandb_dir, exist_ok=True)
            try:
                self.run = self._start_wandb(config, mode, wandb_dir)
            except Exception as err:  # no network, a bad key: W&B must never stop training
                log.warning("W&B %s start failed (%s); logging offline", mode, type(err).__name__)
                mode = "offline"
                self.run = self._start_wandb(config, mode, wandb_dir)
            # run.dir is <run folder>/files; the run folder is what `wandb sync` takes.
            url = self.run.url if mode == "online" else None  # offline runs have none (W&B warns if asked)
            self.event("wandb", mode=mode, url=url, dir=os.path.dirname(self.run.dir))

    @staticmethod
    def _start_wandb(config: TrainConfig, mode: str, wandb_dir: str):
        import wandb

        return wandb.init(
            project=config.logger.project,
            group=config.logger.group,
            job_type="train",
            name=config.run_name,
            id=wandb_run_id(config.storage.url, config.run_name),
            resume="allow",
            mode=mode,
            dir=wandb_dir,
            tags=list(config.logger.tags),
            config=public_config(config),
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
        )

    def log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.folder.write({"step": step, "epoch": epoch, **metrics})
        if self.run is not None:
            self.run.log({**metrics, "epoch": epoch}, step=step)

    def event(self, name: str, **fields: Any) -> None:
        self.folder.event(name, **fields)

    def summary(self, **values: float) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, status: str = "finished") -> None:
        """W&B has no "stopped" state: a stopped run says so in its summary and tags (and
        finishes cleanly, so W&B does not show it as failed or crashed)."""
        self.folder.drain()
        if self.run is not None:
            if status != "finished":
                self.run.summary["status"] = status
                self.run.tags = (*self.run.tags, status)
            self.run.finish()


class NullTracker:
    """What ranks other than 0 log to."""

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def event(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, **kwargs: Any) -> None: ...
    def finish(self, status: str = "finished") -> None: ...
