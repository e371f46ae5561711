"""Rank 0's record of a run: metrics.jsonl in the run's folder (always) and a W&B run (online
with WANDB_API_KEY, else offline; never blocking training). Other ranks get a NullTracker."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from orchestrator import storage
from orchestrator.config import TrainConfig, public_config
from orchestrator.runs.folder import CHECKSUM_FILE, EARLY_STOP, STATE_FILE, RunFolder
from orchestrator.runs.record import RunRecord

log = logging.getLogger(__name__)


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_run_id(storage_url: str, run_name: str) -> str:
    """Stable per run, so a resumed or restarted run appends to the same W&B run."""
    return hashlib.sha256(f"{storage_url}/{run_name}".encode()).hexdigest()[:16]


STATUS_TAGS = ("stopped", "paused", "stopped early")  # what `finish` tags a run that did not finish


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
            # A resumed run runs again: the tag its last end left ("paused", "stopped") goes. Only
            # then a write: a second tags update racing finish's was lost once under load.
            kept = tuple(t for t in self.run.tags if t not in STATUS_TAGS)
            if kept != tuple(self.run.tags):
                self.run.tags = kept
            # run.dir is <run folder>/files; the run folder is what `wandb sync` takes.
            url = self.run.url if mode == "online" else None  # offline runs have none (W&B warns if asked)
            self.event("wandb", mode=mode, url=url, dir=os.path.dirname(self.run.dir))

    @staticmethod
    def _start_wandb(config: TrainConfig, mode: str, wandb_dir: str, public: dict[str, Any] | None = None):
        """`public`: the config W&B shows, by default this one's (which needs cluster.nodes)."""
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
            config=public if public is not None else public_config(config),
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

    def checkpoint(self, url: str, **metadata: Any) -> None:
        """The checkpoint folder at `url` as a W&B model artifact *by reference*: W&B records
        where its files are and their digests, never a second copy (244 MB for the paper net).
        Offline, the artifact is kept in the offline run and `wandb sync` uploads the record.
        The digest is W&B's own (an MD5, or the object's ETag) where W&B's client reads the
        storage as we do; elsewhere the reference is kept without one, and metadata["sha256"]
        (our checksum of state.pt) still tells a changed file."""
        if self.run is None:
            return
        import wandb

        try:
            sha256 = (storage.read_text(storage.join(url, CHECKSUM_FILE), self.folder.options) or "").strip()
            artifact = wandb.Artifact(
                f"model-{self.run.id}", type="model", metadata={**metadata, "url": url, "sha256": sha256},
                description=f"best checkpoint of {self.folder.name}",
            )  # fmt: skip
            checksum = wandb_reads_as_we_do(url, self.folder.options)
            for name in (STATE_FILE, CHECKSUM_FILE):
                ref = reference_uri(storage.join(url, name))
                try:
                    artifact.add_reference(ref, name=name, checksum=checksum)
                except Exception as err:  # W&B's client cannot read it (its credentials): the reference alone
                    log.info("W&B cannot checksum %s (%s); referenced without a digest", ref, type(err).__name__)
                    artifact.add_reference(ref, name=name, checksum=False)
            self.run.log_artifact(artifact, aliases=["best"])
        except Exception as err:  # W&B must never stop training, nor end it badly
            log.warning("the best checkpoint was not logged to W&B (%s: %s)", type(err).__name__, err)
            return
        self.event("artifact", artifact=artifact.name, url=url, checksum=checksum)

    def finish(self, status: str = "finished", **summary: Any) -> None:
        """W&B has no "stopped" state: a stopped run ("stopped", "stopped early") says so in its
        summary and tags, and finishes cleanly, so W&B does not show it as failed or crashed."""
        self.folder.drain()
        if self.run is not None:
            if status != "finished":
                self.run.summary.update({"status": status, **summary})
                self.run.tags = (*self.run.tags, status)
            self.run.finish()


def mark_stopped_early(config: TrainConfig, epoch: int) -> None:
    """A paused run that a sweep's synchronous halving drops (tuning.py), seen from the driver:
    its record and its W&B run (the same id, resumed for a moment) say "stopped early"."""
    folder = RunFolder.of(config)
    folder.event(EARLY_STOP, epoch=epoch)
    folder.drain()
    mode = wandb_mode(config.logger.mode)
    if mode == "disabled":
        return
    try:
        # the run's own config.yaml: the driver's copy never met the cluster (cluster.nodes unset)
        public = RunRecord.read(folder.url, folder.options).config
        run = Tracker._start_wandb(config, mode, folder.wandb_dir(config.logger.dir), public)
        run.summary.update({"status": "stopped early", "stopped_at_epoch": epoch})
        run.tags = (*(t for t in run.tags if t not in STATUS_TAGS), "stopped early")
        run.finish()
    except Exception as err:  # W&B must never end a sweep
        log.warning("W&B was not told that %s stopped early (%s)", config.run_name, type(err).__name__)


def reference_uri(url: str) -> str:
    """What W&B's reference handlers take: file:// with an absolute path for local files."""
    if storage.is_local(url):
        return "file://" + os.path.abspath(url.removeprefix("file://"))
    return url


def wandb_reads_as_we_do(url: str, options: dict[str, Any]) -> bool:
    """Whether W&B's own client reaches `url` where fsspec does: W&B's S3 client takes its
    endpoint from AWS_S3_ENDPOINT_URL only, so a custom endpoint in our storage options (MinIO,
    a test server) is one it would miss, asking AWS instead."""
    if url.startswith("s3://"):
        ours = (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
        return ours is None or ours == os.environ.get("AWS_S3_ENDPOINT_URL")
    return True


class NullTracker:
    """What ranks other than 0 log to."""

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def event(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, **kwargs: Any) -> None: ...
    def checkpoint(self, url: str, **metadata: Any) -> None: ...
    def finish(self, status: str = "finished", **summary: Any) -> None: ...
