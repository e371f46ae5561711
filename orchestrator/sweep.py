"""Hydra multirun: one run per job, named after its overrides, grouped by sweep; optionally
`sweep.parallel=K` jobs at once on the shared Ray cluster.

Hydra's basic launcher calls the task function once per job, in turn, in this process. With
parallel > 1 each call hands its (already prepared) run to a pool of K threads and returns;
every thread drives one Ray Train job; the multirun-end callback waits for all of them. The
pool lives at module level because Hydra gives a task function nowhere else to keep it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None
_jobs: list[Future] = []


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str:
    """Stable for every job of one sweep: its time-stamped sweep folder."""
    parts = os.path.normpath(HydraConfig.get().sweep.dir).split(os.sep)[-2:]
    return "sweep-" + "-".join(parts)


def job_name(prefix: str) -> str:
    """<prefix>_<job number>_<the job's own overrides>, safe as a folder and a W&B name."""
    hc = HydraConfig.get()
    overrides = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", hc.job.override_dirname)
    return f"{prefix}_{hc.job.num}" + (f"_{overrides}" if overrides else "")


def job_names(run_name: str | None, group: str | None) -> tuple[str | None, str | None]:
    """(run_name, W&B group): in a multirun, a unique run name per job and one group for the
    whole sweep; elsewhere as given."""
    if not in_multirun():
        return run_name, group
    group = group or sweep_group()
    return job_name(run_name or group), group


def submit(work: Callable[[], float], parallel: int) -> float | None:
    """Run now (parallel=1, returning the objective) or in the sweep's pool (returning None)."""
    global _pool
    if parallel <= 1 or not in_multirun():
        return work()
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-job")
    _jobs.append(_pool.submit(_reporting_errors, work))
    return None


def _reporting_errors(work: Callable[[], float]) -> float:
    try:
        return work()
    except Exception as err:
        log.error("%s", err)
        raise


class WaitForJobs(Callback):
    """Hydra callback: a multirun ends only when its concurrent jobs have."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _pool
        if _pool is None:
            return
        wait(_jobs)
        failed = sum(1 for job in _jobs if job.exception() is not None)
        if failed:
            log.warning("%d of %d concurrent jobs failed; see their runs in the comparison", failed, len(_jobs))
        _pool.shutdown()
        _pool = None
        _jobs.clear()
