"""python -m orchestrator.train [overrides]: compose and check the config, start or join Ray, run
one Ray Train job (DDP across workers, the two-tower AlexNet across each worker's GPUs)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from typing import Any

import hydra
import ray
import ray.train
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator import storage
from orchestrator.config import REPO_ROOT, ConfigError, absolute, register, validate
from orchestrator.data import load_manifest
from orchestrator.loop import train_loop
from orchestrator.runs import RunRecord
from orchestrator.sweep import in_multirun, name_job, submit
from orchestrator.tracking import public_config

register()

SHIP_EXCLUDES = ["data/", "runs/", "outputs/", "multirun/", "wandb/", ".venv/", ".git/", "*.tar"]


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Everything that can be checked before Ray starts; returns the plain config workers get."""
    config = validate(cfg)
    d = config["data"]
    try:
        manifest = load_manifest(d["url"], d["storage_options"])
    except FileNotFoundError:
        raise ConfigError(
            f"data.url={d['url']} holds no manifest.json; build shards there first (make shards, "
            "or python -m shards imagenet ... --out URL)"
        ) from None
    if "train" not in manifest.splits or "val" not in manifest.splits:
        raise ConfigError(f"data.url={d['url']} lacks a train or val split; convert both splits into it")
    short = manifest.settings.get("resize", 0)
    if short < config["model"]["input_size"]:
        raise ConfigError(
            f"the shards are {short} px but model.input_size={config['model']['input_size']}; "
            "pick a smaller model.input_size (e.g. model=alexnet_mini) or reshard with a larger --resize"
        )
    name_job(config)
    if config["run_name"] is None:
        config["run_name"] = f"{config['experiment']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_url = storage.join(config["storage"]["url"], config["run_name"])
    options = config["storage"]["options"]
    if not config["resume"] and storage.exists(storage.join(run_url, "metrics.jsonl"), options):
        raise ConfigError(
            f"run {config['run_name']} already exists in {config['storage']['url']}; "
            "pass resume=true to continue it, or choose another run_name"
        )
    local_run = run_url.removeprefix("file://") if storage.is_local(run_url) else None
    config["logger"]["dir"] = local_run or os.path.abspath("wandb-runs")
    return config


def connect(config: dict[str, Any]) -> None:
    """Join cluster.address (or RAY_ADDRESS) shipping this repo, or start Ray on this machine."""
    if ray.is_initialized():  # a sweep reuses one Ray for all its jobs
        return
    address = config["cluster"]["address"]
    if address:
        ray.init(
            address=address,
            runtime_env={"working_dir": REPO_ROOT, "excludes": SHIP_EXCLUDES},
            logging_level=logging.WARNING,
        )
    else:
        ray.init(logging_level=logging.WARNING)


def scaling(config: dict[str, Any]) -> tuple[ray.train.ScalingConfig, TorchConfig]:
    cluster = config["cluster"]
    nodes, gpus = cluster["nodes"], cluster["gpus_per_worker"]
    total = ray.cluster_resources()
    use_gpu = gpus > 0 and total.get("GPU", 0) > 0
    if gpus > 0 and not use_gpu:
        print("No GPUs in this Ray cluster: training on the CPU (gloo backend).", flush=True)
    cpus = cluster["cpus_per_worker"]
    if not cluster["address"]:  # an embedded Ray: fractional CPUs so every worker of every job fits
        cpus = min(cpus, total.get("CPU", 1) / (nodes * config["sweep"]["parallel"]))
    resources = {"CPU": cpus, **({"GPU": gpus} if use_gpu else {})}
    wait_for_resources({k: v * nodes for k, v in resources.items()}, cluster["placement_timeout_s"])
    return (
        ray.train.ScalingConfig(num_workers=nodes, use_gpu=use_gpu, resources_per_worker=resources),
        TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )


def wait_for_resources(need: dict[str, float], timeout_s: float) -> None:
    """Ray would wait forever for workers that cannot be placed; we wait a bounded time (an
    autoscaler may be adding nodes), then say what the cluster has."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = ray.cluster_resources()
        short = {k: v for k, v in need.items() if have.get(k, 0) < v}
        if not short:
            return
        if time.monotonic() > deadline:
            wanted = ", ".join(f"{v:g} {k}" for k, v in need.items())
            has = ", ".join(f"{have.get(k, 0):g} {k}" for k in need)
            raise ConfigError(
                f"the job needs {wanted} but the Ray cluster has {has} after {timeout_s:g} s "
                "(cluster.placement_timeout_s); lower cluster.nodes or cluster.gpus_per_worker, or add nodes"
            )
        time.sleep(min(2.0, timeout_s))


def launch(config: dict[str, Any]) -> ray.train.Result:
    scaling_config, torch_config = scaling(config)
    storage_path, storage_fs = storage.ray_storage(config["storage"]["url"], config["storage"]["options"])
    run_url = storage.join(config["storage"]["url"], config["run_name"])
    storage.write_text(
        storage.join(run_url, "config.yaml"),
        OmegaConf.to_yaml(public_config(config)),
        config["storage"]["options"],
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=torch_config,
        scaling_config=scaling_config,
        run_config=ray.train.RunConfig(
            name=config["run_name"],
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=config["cluster"]["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config["checkpoint"]["keep"]),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own lines say enough
            # Train's print patch tees print() into its logger: every line would show twice.
            worker_runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    return trainer.fit()


def root_cause(err: BaseException) -> str:
    """The last 'SomeError: message' line of a worker's traceback, or the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return (causes[-1] if causes else lines[0] if lines else type(err).__name__)[:500]


def summarize(config: dict[str, Any], result: ray.train.Result | None, error: str | None, seconds: float) -> float:
    """Print what a user wants at the end: accuracy, speed, and where everything is."""
    options = config["storage"]["options"]
    run_url = storage.join(config["storage"]["url"], config["run_name"])
    record = RunRecord.read(run_url, options)
    failed = error is not None
    record_event = {"event": "failed" if failed else "finished", "seconds": round(seconds, 1)}
    if failed:
        record_event["error"] = error
    storage.write_text(
        storage.join(run_url, "metrics.jsonl"),
        "".join(json.dumps(line) + "\n" for line in [*record.lines, record_event]),
        options,
    )
    best = record.best() or {}
    rate = record.images_per_s()
    wandb = record.events("wandb")
    checkpoint = result.checkpoint.path if result is not None and result.checkpoint else None
    if checkpoint and not storage.is_local(config["storage"]["url"]):
        checkpoint = config["storage"]["url"].split("://", 1)[0] + "://" + checkpoint
    lines = [
        f"run {config['run_name']}: {'FAILED' if failed else 'finished'} in {seconds:,.0f} s "
        f"({record.epochs_done()} epochs, {config['cluster']['nodes']} workers)",
        f"  val top-1 {best.get('val/top1', 0):.1%}  top-5 {best.get('val/top5', 0):.1%} (best epoch "
        f"{best.get('epoch', -1) + 1})  train speed {rate or 0:,.0f} images/s",
        f"  checkpoint  {checkpoint}",
        f"  metrics     {storage.join(run_url, 'metrics.jsonl')}",
    ]
    if wandb:
        w = wandb[-1]
        where = w["url"] if w["mode"] == "online" else f"{w['dir']} (offline; upload with: wandb sync {w['dir']})"
        lines.append(f"  W&B         {where}")
    print("\n".join(lines), flush=True)
    if failed:
        raise TrainingFailed(f"run {config['run_name']} failed: {record_event['error']}")
    return best.get("val/top1", 0.0)


class TrainingFailed(RuntimeError):
    """The Ray Train job ended in an error (after its retries); the run folder says which."""


def execute(config: dict[str, Any]) -> float:
    start = time.perf_counter()
    result, error = None, None
    try:
        result = launch(config)
        error = root_cause(result.error) if result.error is not None else None
    except ray.train.TrainingFailedError as err:  # a worker or the controller gave up
        error = root_cause(err)
    return summarize(config, result, error, time.perf_counter() - start)


def run(cfg: DictConfig) -> float | None:
    """One job: its best val top-1, or None when a concurrent sweep job was only queued."""
    config = prepare(cfg)
    connect(config)  # here, not in a sweep's job threads: one Ray for all of them
    return submit(lambda: execute(config), config["sweep"]["parallel"])


def record_failure(cfg: DictConfig, error: str) -> None:
    """A sweep job that could not even start still gets a run folder saying why."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        name_job(config)
        run_url = storage.join(absolute(config["storage"]["url"]), config["run_name"])
        options = config["storage"]["options"]
        storage.write_text(storage.join(run_url, "config.yaml"), OmegaConf.to_yaml(public_config(config)), options)
        storage.write_text(
            storage.join(run_url, "metrics.jsonl"),
            json.dumps({"event": "failed", "error": error}) + "\n",
            options,
        )
    except (OmegaConfBaseException, OSError, KeyError, TypeError):
        print("  (the failure could not be recorded in storage either)", file=sys.stderr)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # In a sweep, a failed job is recorded and the sweep goes on (its objective is NaN).
    try:
        return run(cfg)
    except (ConfigError, TrainingFailed) as err:
        print(f"error: {err}", file=sys.stderr)
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
            compose("train", overrides=argv)
    except MissingConfigException as err:
        lines = str(err).splitlines()
        options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
        return f"{lines[0]}; choose one of: {', '.join(options)}" if options else lines[0]
    except ConfigCompositionException as err:
        cause = str(err.__cause__).splitlines()[0] if err.__cause__ else ""
        first = str(err).splitlines()[0].rstrip(".")
        hint = "check the spelling (--cfg job lists every key)" if " not in " in cause else "fix the value"
        return f"{first}: {cause}; {hint}"
    except Exception:  # not ours to judge here: Hydra reports it
        return None
    return None


def cli() -> None:
    problem = override_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
