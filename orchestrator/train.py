"""python -m orchestrator.train [overrides]: compose and check the config, start or join Ray, run
one Ray Train job (DDP across workers, the two-tower AlexNet across each worker's GPUs)."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
import ray
import ray.train
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator import host_memory, storage, tuning
from orchestrator.config import (
    REPO_ROOT,
    ConfigError,
    TrainConfig,
    absolute,
    public_config,
    register,
    unknown_key_problem,
    unknown_keys,
)
from orchestrator.job import prepare
from orchestrator.logs import setup as setup_logging
from orchestrator.ray_cluster import train_loop
from orchestrator.runs import EARLY_STOP, LAUNCHED, PAUSED, RunFolder, RunRecord
from orchestrator.stopping import STOPS, exit_code, interrupts_blocked
from orchestrator.sweep import in_multirun, job_names

register()
log = logging.getLogger("orchestrator.train")
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


def fit_to_machine(nodes: int | None, gpus_per_worker: int | None, gpus: int) -> tuple[int, int, str]:
    """(workers, GPUs per worker, what was decided) for an embedded Ray, which has no autoscaler:
    settings left unset are fitted to this machine's GPUs at once; set ones are kept (and
    refused at once by `wait_for_workers` if they cannot fit)."""
    if gpus == 0:
        return nodes or 2, 0, "No GPUs here: training on the CPU (gloo backend)."
    per = gpus_per_worker if gpus_per_worker is not None else (2 if gpus >= 2 else 1)
    workers = nodes or max(1, gpus // max(1, per))
    if per >= 2:
        how = f"{workers} worker(s) x {per} GPUs, the towers split across each worker's GPUs as in the paper"
    elif per == 1:
        how = f"{workers} worker(s) x 1 GPU, both towers on it (the paper splits them across 2 GPUs)"
    else:
        how = f"{workers} worker(s) on the CPU"
    return workers, per, f"This machine has {gpus} GPU(s): {how}."


def scaling(config: TrainConfig) -> tuple[ray.train.ScalingConfig, TorchConfig]:
    """Ray resources per worker, after fitting unset cluster.nodes/gpus_per_worker: to this
    machine on an embedded Ray; on a joined cluster, unset means 2 GPUs per worker, 2 workers."""
    cluster = config.cluster
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if cluster.address:
        cluster.nodes = cluster.nodes or 2
        cluster.gpus_per_worker = cluster.gpus_per_worker if cluster.gpus_per_worker is not None else 2
        if gpus == 0:
            log.info("No GPUs in this Ray cluster: training on the CPU (gloo backend).")
    else:
        cluster.nodes, cluster.gpus_per_worker, decided = fit_to_machine(cluster.nodes, cluster.gpus_per_worker, gpus)
        log.info(decided)
    use_gpu = cluster.gpus_per_worker > 0 and gpus > 0
    cpus = cluster.cpus_per_worker
    if not cluster.address:  # an embedded Ray: fractional CPUs so every worker of every trial fits
        spare = total.get("CPU", 1) - tuning.TRIAL_CPU * config.sweep.parallel  # the trials' own share
        cpus = min(cpus, spare / (cluster.nodes * config.sweep.parallel))
    per_worker = {"CPU": cpus, **({"GPU": cluster.gpus_per_worker} if use_gpu else {})}
    wait_for_workers(per_worker, cluster.nodes, cluster.placement_timeout_s, autoscaled=bool(cluster.address))
    return (
        ray.train.ScalingConfig(
            num_workers=cluster.nodes,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
            placement_strategy=cluster.placement_strategy,
        ),
        TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )


def workers_that_fit(nodes: list[dict[str, Any]], per_worker: dict[str, float]) -> int:
    """How many workers the alive nodes hold, each worker whole on one node: its two GPUs
    must be on one machine, so eight 1-GPU nodes hold no 2-GPU worker at all."""
    fit = 0
    for node in nodes:
        if node.get("Alive", True):
            have = node["Resources"]
            fit += min(math.floor(have.get(k, 0) / v + 1e-9) for k, v in per_worker.items() if v > 0)
    return fit


def wait_for_workers(per_worker: dict[str, float], workers: int, timeout_s: float, autoscaled: bool) -> None:
    """Ray would wait forever for workers that cannot be placed. On a joined cluster we wait a
    bounded time (an autoscaler may be adding nodes); an embedded Ray has no autoscaler, so it
    is decided at once. Then one sentence says what a worker needs and what the nodes have."""
    deadline = time.monotonic() + (timeout_s if autoscaled else 0)
    while True:
        nodes = ray.nodes()
        fit = workers_that_fit(nodes, per_worker)
        if fit >= workers:
            return
        if time.monotonic() >= deadline:
            need = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
            alive = [node["Resources"] for node in nodes if node.get("Alive", True)]
            have = "; ".join(", ".join(f"{r.get(k, 0):g} {k}" for k in per_worker) for r in alive)
            waited = f" after {timeout_s:g} s (cluster.placement_timeout_s)" if autoscaled else ""
            raise ConfigError(
                f"the job needs {workers} workers of {need} each, every worker on one node, but the Ray "
                f"cluster's nodes ({have}) hold {fit}{waited}; lower cluster.nodes or cluster.gpus_per_worker, "
                "or add nodes"
            )
        time.sleep(min(2.0, timeout_s))


def worker_env(config: TrainConfig) -> dict[str, str]:
    """Environment variables of the training workers' processes."""
    # Train's print patch tees print() into its logger: every line would show twice.
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if config.perf.reuse_host_memory:  # the training loop runs in a thread there: see host_memory.ENV
        env |= host_memory.ENV
    return env


def launch(config: TrainConfig) -> ray.train.Result:
    scaling_config, torch_config = scaling(config)
    storage_path, storage_fs = storage.ray_storage(config.storage.url, config.storage.options)
    folder = RunFolder(config.storage.url, config.run_name, config.storage.options)
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
            callbacks=[tuning.epoch_reports()] if tuning.in_trial() else [],  # a sweep's trial: epochs to Tune
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


def summarize(config: TrainConfig, result: ray.train.Result | None, error: str | None, seconds: float) -> float:
    """Record how the run ended and say what a user wants: accuracy, speed, where everything is."""
    folder = RunFolder(config.storage.url, config.run_name, config.storage.options)
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


class TrainingFailed(RuntimeError):
    """The Ray Train job ended in an error (after its retries); the run folder says which."""


def execute(config: TrainConfig) -> float:
    if STOPS.signum is not None:  # a sweep's job queued behind a stopped one
        log.info("run %s not started: the sweep was stopped", config.run_name)
        return math.nan
    start = time.perf_counter()
    result, error = None, None
    STOPS.track(config.run_name, RunFolder(config.storage.url, config.run_name, config.storage.options))
    try:
        result = launch(config)
        error = root_cause(result.error) if result.error is not None else None
    except ray.train.TrainingFailedError as err:  # a worker or the controller gave up
        error = root_cause(err)
    finally:
        STOPS.untrack(config.run_name)
        if STOPS.signum is not None:  # answered: a later resume must not see it
            RunFolder(config.storage.url, config.run_name, config.storage.options).clear_stop()
    return summarize(config, result, error, time.perf_counter() - start)


def run(cfg: DictConfig) -> float | None:
    """One job: its best val top-1; None for a sweep's job, which the launcher runs as a Tune
    trial once every job of the sweep is prepared."""
    setup_logging()
    config = prepare(cfg)
    connect(config)  # one Ray for the run, or for all of a sweep's trials
    STOPS.install()  # after ray.init, which sets a SIGTERM handler of its own
    if in_multirun() and tuning.collect(HydraConfig.get().job.num, config):
        return None
    return execute(config)


def record_failure(cfg: DictConfig, error: str) -> None:
    """A sweep job that could not even start still gets a run folder saying why."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        name, _ = job_names(config["run_name"], config["logger"]["group"])
        folder = RunFolder(absolute(config["storage"]["url"]), name, config["storage"]["options"])
        folder.write_config(public_config(config))
        folder.event("failed", error=error)
        folder.drain()
    except (OmegaConfBaseException, OSError, KeyError, TypeError):
        log.error("(the failure could not be recorded in storage either)")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job is recorded and the sweep goes on (its objective is NaN).
    try:
        return run(cfg)
    except (ConfigError, TrainingFailed) as err:
        log.error("%s", err)
        if in_multirun():
            if isinstance(err, ConfigError):
                record_failure(cfg, str(err))
            return math.nan
        sys.exit(2 if isinstance(err, ConfigError) else 1)


def override_problem(argv: list[str]) -> str | None:
    """One sentence for an override Hydra cannot compose (an unknown key, a wrong type, a missing
    option), checked before Hydra runs: its own report spans several lines. Sweeps (-m) and
    anything this check cannot judge are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=os.path.join(REPO_ROOT, "conf"), version_base="1.3"):
            cfg = compose("train", overrides=argv)
    except MissingConfigException as err:
        lines = str(err).splitlines()
        options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
        return f"{lines[0]}; choose one of: {', '.join(options)}" if options else lines[0]
    except ConfigCompositionException as err:
        cause = str(err.__cause__).splitlines()[0] if err.__cause__ else ""
        unknown = re.match(r"Key '(\w+)' not in '\w+'\s+full_key: ([\w.]+)", str(err.__cause__ or ""))
        if unknown:
            return unknown_key_problem(unknown.group(2))
        return f"{str(err).splitlines()[0].rstrip('.')}: {cause}; fix the value"
    except Exception:  # not ours to judge here: Hydra reports it
        return None
    unknown = unknown_keys(cfg)
    return unknown_key_problem(unknown[0]) if unknown else None


def cli() -> None:
    setup_logging()
    problem = override_problem(sys.argv[1:])
    if problem:
        log.error("%s", problem)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C (or an interrupt before Ray ran): at once
        log.error("stopped at once; resume=true continues from the run's last checkpoint")
        sys.exit(exit_code(STOPS.signum or signal.SIGINT))
    if STOPS.signum is not None:  # stopped with a checkpoint: a shell and a scheduler see why
        sys.exit(exit_code(STOPS.signum))


if __name__ == "__main__":
    cli()
