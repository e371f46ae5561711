"""The end of a run, seen from the driver: its end event recorded and the lines a user reads."""

from __future__ import annotations

import logging

import ray
import ray.train

from orchestrator import storage
from orchestrator.config import (
    TrainConfig,
)
from orchestrator.runs.folder import EARLY_STOP, PAUSED, RunFolder
from orchestrator.runs.record import RunRecord

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """The Ray Train job ended in an error (after its retries); the run folder says which."""


def summarize(config: TrainConfig, result: ray.train.Result | None, error: str | None, seconds: float) -> float:
    """Record how the run ended and say what a user wants: accuracy, speed, where everything is."""
    folder = RunFolder.of(config)
    failed = error is not None
    record = RunRecord.read(folder.url, folder.options)  # what the workers wrote; the summary needs no more
    ended = record.end_event  # rank 0 says when the run stopped, or was stopped early by a sweep
    stopped = not failed and ended == "stopped"
    end = {"seconds": round(seconds, 1), **({"error": error} if failed else {})}
    if failed or ended not in ("stopped", PAUSED, EARLY_STOP):
        folder.event("failed" if failed else "finished", **end)
    folder.drain()
    best = record.best() or {}
    wandb = record.events("wandb")
    checkpoint = result.checkpoint.path if result is not None and result.checkpoint else None
    if checkpoint and not storage.is_local(config.storage.url):
        checkpoint = config.storage.url.split("://", 1)[0] + "://" + checkpoint
    outcome = "FAILED" if failed else record.status if ended in (EARLY_STOP, PAUSED) else "finished"
    if ended == PAUSED and not failed:
        outcome += f" (until_epoch; resume=true run_name={config.run_name} continues there)"
    if stopped:
        at = record.events("stopped")[-1]
        outcome = f"stopped at step {at['step']} (resume=true run_name={config.run_name} continues there)"
    lines = [
        f"run {config.run_name}: {outcome} in {seconds:,.0f} s "
        f"({record.epochs_done()} epochs, {config.cluster.nodes} workers)",
        f"  val top-1 {best.get('val/top1', 0):.1%}  top-5 {best.get('val/top5', 0):.1%} (best epoch "
        f"{best.get('epoch', -1) + 1})  train speed {record.images_per_s() or 0:,.0f} images/s",
        f"  checkpoint  {checkpoint}",
        f"  metrics     {folder.metrics_url}",
    ]
    if wandb:
        w = wandb[-1]
        where = w["url"] if w["mode"] == "online" else f"{w['dir']} (offline; upload with: wandb sync {w['dir']})"
        lines.append(f"  W&B         {where}")
    log.info("\n".join(lines))
    if failed:
        raise TrainingFailed(f"run {config.run_name} failed: {error}")
    return best.get("val/top1", 0.0)
