"""Sweeps as Ray Tune trials. Hydra composes and checks every job of a multirun (the launcher in
hydra_plugins/alexnet_orchestrator); each prepared job becomes one Tune trial, whose function
drives that job's Ray Train run exactly as a single run does (`launch.ray_job.execute`). The trial itself
holds a hundredth of a CPU; its Ray Train workers ask for their own GPUs, so as many trials run
at once as the cluster holds (at most `sweep.parallel`) and the rest queue.

`sweep.scheduler` stops hopeless runs early on val top-1 per epoch: `sha` (the default:
synchronous successive halving, rung by rung, every run paused at each rung and the best resumed
from its own checkpoint; `halving`), `asha` (Li et al. 2018, asynchronous successive halving:
never waits, but cannot judge the first trials) or `hyperband` (Tune's synchronous
HyperBandScheduler, which pauses and restores trials itself). ASHA's and HyperBand's verdicts
reach a run the way Ctrl-C does, as a stop request in its folder, so it ends cleanly: a
checkpoint, its best checkpoint in W&B, its W&B run finished and tagged, and
`stopped early at epoch N` in its record."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.launch.ray_job import execute, off_the_main_thread, root_cause
from orchestrator.launch.resources import TRIAL_CPU
from orchestrator.launch.summary import TrainingFailed
from orchestrator.runs.folder import EARLY_STOP, RunFolder
from orchestrator.runs.record import RunRecord

log = logging.getLogger(__name__)

METRIC = "val/top1"

_collected: dict[int, TrainConfig] | None = None


@contextlib.contextmanager
def collecting() -> Iterator[dict[int, TrainConfig]]:
    """While open, a job's task hands its prepared config over (`collect`) instead of training."""
    global _collected
    _collected = {}
    try:
        yield _collected
    finally:
        _collected = None


def collect(job: int, config: TrainConfig) -> bool:
    if _collected is None:
        return False
    _collected[job] = config
    return True


def epoch_reports():
    """Ray Train's TuneReportCallback, passing on only the end-of-epoch reports (with val top-1):
    the mid-epoch checkpoint reports have no val/top1, which the schedulers and Tune's strict
    metric check need in every result."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if METRIC in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


def run_folder(config: TrainConfig) -> RunFolder:
    return RunFolder.of(config)


def trial(params: dict[str, Any], jobs: dict[int, TrainConfig]) -> None:
    """One Tune trial: one job's whole run (its own TorchTrainer), unless the sweep was stopped
    (Ctrl-C, SIGTERM) while it waited in the queue."""
    config = jobs[params["job"]]
    folder = run_folder(config)
    if folder.stop_requested():
        done = RunRecord.read(folder.url, folder.options).epochs_done()  # a paused run has some
        folder.event("stopped", step=0, epoch=done, batch=0)
        folder.drain()
        return
    try:
        execute(config, callbacks=[epoch_reports()])  # its epochs go up to Tune
    except TrainingFailed as err:  # recorded in its run folder; the sweep goes on
        log.error("%s", err)


def fit_trials(jobs: dict[int, TrainConfig], experiment_dir: str, chosen: Any, name: str) -> dict[int, Exception]:
    """One Tune experiment over `jobs` (`name`: its folder under experiment_dir); the error of
    each job whose trial failed outside its run."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, jobs=jobs), {"cpu": TRIAL_CPU}),
        param_space={"job": tune.grid_search(sorted(jobs))},
        tune_config=tune.TuneConfig(
            scheduler=chosen, max_concurrent_trials=next(iter(jobs.values())).sweep.parallel, reuse_actors=False
        ),
        run_config=tune.RunConfig(name=name, storage_path=os.path.abspath(experiment_dir), verbose=0, log_to_file=True),
    )
    results = off_the_main_thread(tuner.fit)
    return {result.config["job"]: result.error for result in results if result.config and result.error}


def outcome(config: TrainConfig, error: Exception | None, stopped: bool = False) -> float:
    """A run that ended without an end event was ended by the scheduler (`stopped_early`), by a
    Ctrl-C on the sweep (`stopped`), or its trial failed outside the run (`failed`)."""
    folder = run_folder(config)
    record = RunRecord.read(folder.url, folder.options)
    if record.status in ("running", "empty"):
        if record.epochs_done() >= config.epochs:  # stopped as it was ending: every epoch is there
            folder.event("finished", epochs=config.epochs)
        elif stopped:
            folder.event("stopped", step=0, epoch=record.epochs_done(), batch=0)
        elif error is not None:
            folder.event("failed", error=root_cause(error))
            log.error("run %s failed: %s", config.run_name, root_cause(error))
        else:
            epochs = record.epochs_done()
            folder.event(EARLY_STOP, epoch=epochs)
            log.info("run %s: stopped early at epoch %d (%s)", config.run_name, epochs, config.sweep.scheduler)
        folder.drain()
    best = record.best()
    return best["val/top1"] if best else math.nan
