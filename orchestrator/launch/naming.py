"""Hydra multirun: one run per job, named after its overrides, grouped by sweep. The jobs run as
Ray Tune trials (orchestrator/sweeps/), `sweep.parallel` at once."""

from __future__ import annotations

import os
import re

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


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
