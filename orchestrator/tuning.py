"""Sweeps as Ray Tune trials. Hydra composes and checks every job of a multirun (the launcher in
hydra_plugins/alexnet_orchestrator); each prepared job becomes one Tune trial, whose function
drives that job's Ray Train run exactly as a single run does (`train.execute`). The trial itself
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
import copy
import logging
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from orchestrator.config import SweepConfig, TrainConfig
from orchestrator.runs import EARLY_STOP, PAUSED, RunFolder, RunRecord

log = logging.getLogger(__name__)

METRIC = "val/top1"
TRIAL_CPU = 0.01  # what a trial's driver function holds; its workers ask for their own
_collected: dict[int, TrainConfig] | None = None
_in_trial = False  # set in a trial's process, where its TorchTrainer reports epochs to Tune


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
    return RunFolder(config.storage.url, config.run_name, config.storage.options)


def in_trial() -> bool:
    return _in_trial


def scheduler(sweep: SweepConfig, max_epochs: int, runs: dict[int, TrainConfig]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    common = {"time_attr": "epoch", "metric": METRIC, "mode": "max", "max_t": max_epochs}
    if sweep.scheduler == "asha":
        # stop_last_trials=False: a run that reached its last epoch ends by itself (W&B, summary)
        return stopping_gracefully(ASHAScheduler, runs, rejudge=sweep.rejudge)(
            **common, grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor, stop_last_trials=False
        )
    if sweep.scheduler == "hyperband":
        return stopping_gracefully(HyperBandScheduler, runs)(**common, reduction_factor=sweep.reduction_factor)
    return FIFOScheduler()


def stopping_gracefully(base: type, runs: dict[int, TrainConfig], rejudge: bool = False) -> type:
    """`base` (a Tune scheduler) whose STOP is a stop request in the run's folder instead of a
    killed trial: the run stops at its next step as on Ctrl-C (Tune would kill its workers, and
    with them the W&B run and the last upload), then its trial returns by itself.

    `rejudge` (ASHA): asynchronous successive halving judges a run once per rung, against the
    runs that reached that rung before it, so the first runs of a sweep pass every rung
    unjudged (measured: two diverged runs at chance accuracy trained to the end while later,
    better runs were cut). With `rejudge`, each of a run's results is also held against its
    rungs as they are now: a run below the cutoff of the others' values at a rung it passed is
    stopped as soon as enough better runs have reached that rung."""

    class StoppingGracefully(base):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.CONTINUE and rejudge and self.behind_at_a_passed_rung(trial):
                action = self.STOP
            if action != self.STOP:
                return action
            run_folder(runs[trial.config["job"]]).request_stop(EARLY_STOP)
            return self.CONTINUE

        def behind_at_a_passed_rung(self, trial: Any) -> bool:
            """Tune's ASHA keeps, per rung, {trial id: metric} (`_Bracket._rungs`) and the
            percentile cutoff (`cutoff`); metrics are stored sign-adjusted, higher is better."""
            bracket = getattr(self, "_trial_info", {}).get(trial.trial_id)
            for _, recorded in getattr(bracket, "_rungs", []):
                if trial.trial_id not in recorded:
                    continue
                others = {k: v for k, v in recorded.items() if k != trial.trial_id}
                cutoff = bracket.cutoff(others)
                if cutoff is not None and recorded[trial.trial_id] < cutoff:
                    return True
            return False

    StoppingGracefully.__name__ = f"Graceful{base.__name__}"
    return StoppingGracefully


def trial(params: dict[str, Any], jobs: dict[int, TrainConfig]) -> None:
    """One Tune trial: one job's whole run (its own TorchTrainer), unless the sweep was stopped
    (Ctrl-C, SIGTERM) while it waited in the queue."""
    from orchestrator.train import TrainingFailed, execute

    global _in_trial
    _in_trial = True
    config = jobs[params["job"]]
    folder = run_folder(config)
    if folder.stop_requested():
        done = RunRecord.read(folder.url, folder.options).epochs_done()  # a paused run has some
        folder.event("stopped", step=0, epoch=done, batch=0)
        folder.drain()
        return
    try:
        execute(config)
    except TrainingFailed as err:  # recorded in its run folder; the sweep goes on
        log.error("%s", err)


def run_trials(jobs: dict[int, TrainConfig], experiment_dir: str) -> dict[int, float]:
    """Run every prepared job as a trial; each job's objective (best val top-1, NaN if none)."""
    if not jobs:
        return {}
    from orchestrator.config import ConfigError
    from orchestrator.stopping import STOPS
    from orchestrator.train import scaling

    first = next(iter(jobs.values()))
    sweep = first.sweep
    try:  # can one trial be placed at all? One line if not, before anything starts
        scaling(copy.deepcopy(first))
    except ConfigError as err:
        log.error("no run of this sweep can start: %s", err)
        sys.exit(2)
    folders = {job: run_folder(config) for job, config in jobs.items()}
    for folder in folders.values():  # a request left by an earlier sweep of these runs is not for this one
        folder.clear_stop()
    log.info("%d runs as Ray Tune trials, at most %d at once, scheduler %s", len(jobs), sweep.parallel, sweep.scheduler)
    for job, config in jobs.items():  # Ctrl-C: every run of the sweep checkpoints and stops
        STOPS.track(config.run_name, folders[job])
    try:
        if sweep.scheduler == "sha":
            errors = halving(jobs, experiment_dir)
        else:
            epochs = max(c.epochs for c in jobs.values())
            errors = fit_trials(jobs, experiment_dir, scheduler(sweep, epochs, jobs), "tune")
    finally:
        for config in jobs.values():
            STOPS.untrack(config.run_name)
    return {job: outcome(config, errors.get(job), stopped=STOPS.signum is not None) for job, config in jobs.items()}


def fit_trials(jobs: dict[int, TrainConfig], experiment_dir: str, chosen: Any, name: str) -> dict[int, Exception]:
    """One Tune experiment over `jobs` (`name`: its folder under experiment_dir); the error of
    each job whose trial failed outside its run."""
    from ray import tune

    from orchestrator.train import off_the_main_thread

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


def rungs(epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Where synchronous halving judges the runs: grace_period x reduction_factor^k epochs, then
    the last epoch. (12, 1, 2) -> [1, 2, 4, 8, 12]."""
    marks = []
    mark = grace_period
    while mark < epochs:
        marks.append(mark)
        mark *= reduction_factor
    return [*marks, epochs]


def survivors(scores: dict[int, float], reduction_factor: int) -> list[int]:
    """The best 1/reduction_factor of the runs (at least one), by val top-1 at the rung; a run
    with no score there (it failed) never goes on. Ties keep the earlier job."""
    scored = sorted((job for job, score in scores.items() if not math.isnan(score)), key=lambda j: (-scores[j], j))
    return scored[: max(1, math.ceil(len(scores) / reduction_factor))]


def halving(jobs: dict[int, TrainConfig], experiment_dir: str) -> dict[int, Exception]:
    """Synchronous successive halving (`sweep.scheduler=sha`), rung by rung: every run trains to
    the rung's epoch and pauses there (`until_epoch`, a checkpoint); the best 1/reduction_factor
    by val top-1 at that epoch are resumed, exactly where they paused, to the next rung; the
    others are recorded as stopped early. Unlike ASHA no run passes a rung unjudged, and unlike
    Tune's HyperBand no trial is paused and restored by Tune: a run's own checkpoint and
    `resume=true` carry it over, and a waiting run holds no GPU. Each rung relaunches its runs
    (~15 s each on this machine), which epochs of minutes make negligible."""
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.stopping import STOPS
    from orchestrator.tracking import mark_stopped_early

    sweep = next(iter(jobs.values())).sweep
    epochs = max(c.epochs for c in jobs.values())
    alive = sorted(jobs)
    errors: dict[int, Exception] = {}
    for i, rung in enumerate(rungs(epochs, sweep.grace_period, sweep.reduction_factor)):
        last = len(alive) == 1 or rung >= epochs  # nothing left to compare: train to the end
        for job in alive:
            jobs[job].until_epoch = None if last or rung >= jobs[job].epochs else rung
            jobs[job].resume = i > 0
        log.info("halving: %d run(s) to epoch %s", len(alive), "the end" if last else rung)
        errors |= fit_trials({job: jobs[job] for job in alive}, experiment_dir, FIFOScheduler(), f"tune-rung-{rung}")
        if last or STOPS.signum is not None:
            break
        scores = {job: top1_at(jobs[job], rung) for job in alive}
        kept = survivors(scores, sweep.reduction_factor)
        for job in alive:
            if job not in kept and not math.isnan(scores[job]):
                mark_stopped_early(jobs[job], rung)
                log.info("run %s: stopped early at epoch %d (sha)", jobs[job].run_name, rung)
        alive = kept
        if not alive:  # every run failed before the rung
            break
    return errors


def top1_at(config: TrainConfig, epoch: int) -> float:
    """The run's val top-1 after `epoch` epochs, if it paused there (NaN if it failed first)."""
    folder = run_folder(config)
    record = RunRecord.read(folder.url, folder.options)
    if record.end_event != PAUSED:
        return math.nan
    values = [line[METRIC] for line in record.metric_lines(METRIC) if line["epoch"] + 1 == epoch]
    return values[-1] if values else math.nan


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
            from orchestrator.train import root_cause

            folder.event("failed", error=root_cause(error))
            log.error("run %s failed: %s", config.run_name, root_cause(error))
        else:
            epochs = record.epochs_done()
            folder.event(EARLY_STOP, epoch=epochs)
            log.info("run %s: stopped early at epoch %d (%s)", config.run_name, epochs, config.sweep.scheduler)
        folder.drain()
    best = record.best()
    return best["val/top1"] if best else math.nan
