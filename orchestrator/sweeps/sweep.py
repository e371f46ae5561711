"""A whole sweep: every prepared job of a Hydra multirun run as Ray Tune trials under the chosen
scheduler; Ctrl-C stops every run with a checkpoint."""

from __future__ import annotations

import copy
import logging
import sys

from orchestrator.config import TrainConfig
from orchestrator.sweeps.schedulers import halving, scheduler
from orchestrator.sweeps.trials import fit_trials, outcome, run_folder

log = logging.getLogger(__name__)


def run_trials(jobs: dict[int, TrainConfig], experiment_dir: str) -> dict[int, float]:
    """Run every prepared job as a trial; each job's objective (best val top-1, NaN if none)."""
    if not jobs:
        return {}
    from orchestrator.config import ConfigError
    from orchestrator.launch.resources import scaling
    from orchestrator.launch.stops import STOPS

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
