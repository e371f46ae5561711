"""Stopping hopeless runs early on val top-1 per epoch (`sweep.scheduler`): `sha` (synchronous
successive halving, `halving`: every run paused at each rung, the best resumed from their own
checkpoints), `asha` and `hyperband` (Tune's, whose STOP becomes a stop request in the run's
folder, so the run ends cleanly: `stopping_gracefully`)."""

from __future__ import annotations

import logging
import math
from typing import Any

from orchestrator.config import SweepConfig, TrainConfig
from orchestrator.runs.folder import EARLY_STOP, PAUSED
from orchestrator.runs.record import RunRecord
from orchestrator.sweeps.trials import METRIC, fit_trials, run_folder

log = logging.getLogger(__name__)


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

    from orchestrator.launch.stops import STOPS
    from orchestrator.runs.tracking import mark_stopped_early

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
