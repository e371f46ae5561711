"""One run as a Ray Train job, from the driver: join or start Ray, build the TorchTrainer whose
workers run `launch.ray_worker.train_loop`, fit it off the main thread (so Ctrl-C checkpoints
instead of aborting), and say how it ended. A sweep's trial runs the same `execute`."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator import storage
from orchestrator.config import (
    REPO_ROOT,
    TrainConfig,
    public_config,
)
from orchestrator.launch.ray_worker import train_loop
from orchestrator.launch.resources import scaling
from orchestrator.launch.stops import STOPS, interrupts_blocked
from orchestrator.launch.summary import summarize
from orchestrator.runs.folder import LAUNCHED, RunFolder
from orchestrator.worker import host_memory

log = logging.getLogger(__name__)

T = TypeVar("T")

# gitignore patterns: anchored with "/", or "data/" would also drop conf/data/ (a config group)
SHIP_EXCLUDES = [
    "/data/", "/runs/", "/outputs/", "/multirun/", "/wandb-runs/", "wandb/", "/.venv/", ".git/", "*.tar",
    ".pytest_cache/", ".ruff_cache/",
]  # fmt: skip


def connect(config: TrainConfig) -> None:
    """Join cluster.address (or RAY_ADDRESS) shipping this repo, or start Ray on this machine."""
    if ray.is_initialized():  # a sweep reuses one Ray for all its jobs
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # the driver of a Ray job: the code is shipped
        ray.init(address=config.cluster.address or "auto", logging_level=logging.WARNING)
    elif config.cluster.address:
        ray.init(
            address=config.cluster.address,
            runtime_env={"working_dir": REPO_ROOT, "excludes": SHIP_EXCLUDES},
            logging_level=logging.WARNING,
        )
    else:
        with interrupts_blocked():  # Ray's own processes must survive the terminal's Ctrl-C
            ray.init(logging_level=logging.WARNING)


def worker_env(config: TrainConfig) -> dict[str, str]:
    """Environment variables of the training workers' processes."""
    # Train's print patch tees print() into its logger: every line would show twice.
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if config.perf.reuse_host_memory:  # the training loop runs in a thread there: see host_memory.ENV
        env |= host_memory.ENV
    return env


def launch(config: TrainConfig, callbacks: list[Any]) -> ray.train.Result:
    scaling_config, torch_config = scaling(config)
    storage_path, storage_fs = storage.ray_storage(config.storage.url, config.storage.options)
    folder = RunFolder.of(config)
    folder.clear_stop()
    folder.write_config(public_config(config))
    folder.event(LAUNCHED, workers=config.cluster.nodes, until_epoch=config.until_epoch)
    folder.drain()  # before rank 0 reads the record to append to it (object stores rewrite it whole)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=torch_config,
        scaling_config=scaling_config,
        run_config=ray.train.RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=config.cluster.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own lines say enough
            callbacks=callbacks,  # a sweep's trial: its epochs to Tune
            worker_runtime_env={"env_vars": worker_env(config)},
        ),
    )
    return off_the_main_thread(trainer.fit)


def off_the_main_thread(work: Callable[[], T]) -> T:
    """Ray Train's `fit()` (and Tune's) answers Ctrl-C itself when called from the main thread,
    by aborting: everything since the last checkpoint is lost. From another thread they leave
    signals to us (`STOPS`: checkpoint at the current step, then stop); the main thread waits."""
    if threading.current_thread() is not threading.main_thread():
        return work()  # a Tune trial's thread: signals are the launcher's business
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, name="fit", daemon=True)  # daemon: a 2nd Ctrl-C exits
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)  # wakes up so the signal handlers run promptly
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def root_cause(err: BaseException) -> str:
    """The last 'SomeError: message' line of a worker's traceback, or the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return (causes[-1] if causes else lines[0] if lines else type(err).__name__)[:500]


def execute(config: TrainConfig, callbacks: list[Any] | None = None) -> float:
    """The whole run; its best val top-1. `callbacks`: Ray Train's, a sweep's trial passes Tune's."""
    if STOPS.signum is not None:  # a sweep's job queued behind a stopped one
        log.info("run %s not started: the sweep was stopped", config.run_name)
        return math.nan
    start = time.perf_counter()
    result, error = None, None
    STOPS.track(config.run_name, RunFolder.of(config))
    try:
        result = launch(config, callbacks or [])
        error = root_cause(result.error) if result.error is not None else None
    except ray.train.TrainingFailedError as err:  # a worker or the controller gave up
        error = root_cause(err)
    finally:
        STOPS.untrack(config.run_name)
        if STOPS.signum is not None:  # answered: a later resume must not see it
            RunFolder.of(config).clear_stop()
    return summarize(config, result, error, time.perf_counter() - start)
