"""python -m orchestrator.submit [--address URL] [--nodes N] [overrides]: a training run on a
remote Ray cluster through Ray Jobs (the head's dashboard, port 8265), from any machine that can
reach it. This repository travels as the job's working directory (data/, runs/, .venv/ left
out); the job's driver is `python -m orchestrator.train cluster=ray ...` on the head node; this
command prints where the run's folder and W&B run will be, then follows the job's log until it
ends and exits with the job's exit code. Ctrl-C here leaves the job running.

`--kuberay` renders a KubeRay RayJob manifest instead (orchestrator/kuberay.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from dataclasses import dataclass

from orchestrator import storage
from orchestrator.config import REPO_ROOT, ConfigError, TrainConfig, validate
from orchestrator.logs import setup as setup_logging
from orchestrator.tracking import wandb_run_id

log = logging.getLogger("orchestrator.submit")

# `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default, 3 s, is too
# short for the workers to write a checkpoint: 244 MB for the paper net).
STOP_WAIT_S = 300


@dataclass
class Job:
    """One training run as a Ray job: the entrypoint and the config it will run with."""

    config: TrainConfig
    entrypoint: str

    @property
    def run_url(self) -> str:
        return storage.join(self.config.storage.url, self.config.run_name)

    def where(self) -> list[str]:
        c = self.config
        mode = c.logger.mode or "online if WANDB_API_KEY is set on the cluster, else offline"
        return [
            f"  run folder  {self.run_url}",
            f"  W&B         project {c.logger.project}, run id {wandb_run_id(c.storage.url, c.run_name)} ({mode})",
        ]


def compose_job(overrides: list[str], nodes: int | None) -> Job:
    """The run's config as the cluster will see it, checked here before anything is shipped:
    `cluster=ray`, the node count, and a fixed run name (so it can be named now)."""
    from hydra import compose, initialize_config_dir

    from orchestrator.job import default_run_name
    from orchestrator.train import override_problem

    fixed = ["cluster=ray", *([f"cluster.nodes={nodes}"] if nodes else [])]
    argv = [*fixed, *overrides]
    problem = override_problem(argv)
    if problem:
        raise ConfigError(problem)
    with initialize_config_dir(config_dir=os.path.join(REPO_ROOT, "conf"), version_base="1.3"):
        config = validate(compose("train", overrides=argv))
    if config.run_name is None:
        config.run_name = default_run_name(config.experiment)
        argv.append(f"run_name={config.run_name}")
    for key, url in (("storage.url", config.storage.url), ("data.url", config.data.url)):
        reachable(key, url)
    return Job(config, shlex.join(["python", "-m", "orchestrator.train", *argv]))


def reachable(key: str, url: str) -> None:
    """A local path inside this repository is not shipped (data/ and runs/ stay behind) and
    means nothing on the cluster; any other local path must be mounted on every node."""
    if not storage.is_local(url):
        return
    path = os.path.realpath(url.removeprefix("file://"))
    if path == REPO_ROOT or path.startswith(REPO_ROOT + os.sep):
        raise ConfigError(
            f"{key}={path} is in this repository, which the cluster does not get (data/ and runs/ stay here); "
            f"set {key} to s3://... or gs://..., or to a path mounted on every node"
        )
    log.warning("%s=%s is a local path: it must exist on every node of the cluster (a shared mount)", key, path)


def submit(address: str, job: Job) -> str:
    """The job id. Only code and settings travel: credentials stay with the cluster's nodes
    (a runtime_env's variables are visible to anyone who can list the cluster's jobs)."""
    from orchestrator.train import SHIP_EXCLUDES

    runtime_env = {
        "working_dir": REPO_ROOT,
        "excludes": SHIP_EXCLUDES,
        "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), "PYTHONUNBUFFERED": "1"},
    }
    return connect(address).submit_job(entrypoint=job.entrypoint, runtime_env=runtime_env)


def connect(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    use_token_if_present()
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ConfigError(
            f"the Ray cluster at {address} wants its authentication token: copy it from the head node "
            "(~/.ray/auth_token) to the same place here, or set RAY_AUTH_TOKEN"
        ) from err
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(
            f"cannot reach the Ray Jobs server at {address} ({str(err).splitlines()[0][:200]}); ADDRESS must be "
            "the head node's dashboard, http://<head>:8265"
        ) from err


def use_token_if_present() -> None:
    """What `ray start` and `ray.init` do, and the Jobs client does not: with a token at hand
    (~/.ray/auth_token, RAY_AUTH_TOKEN), speak token authentication, Ray's default since 2.5x."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def follow(address: str, job_id: str) -> int:
    """Print the job's log as it comes; its driver's exit code (0 when it succeeded)."""
    from ray.job_submission import JobStatus

    client = connect(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if code is not None:
        return code
    return 0 if info.status == JobStatus.SUCCEEDED else 1


def commands(address: str, job_id: str) -> list[str]:
    return [
        f"  follow      ray job logs --address {address} --follow {job_id}",
        f"  stop        ray job stop --address {address} {job_id}   (checkpoints first; resume=true continues)",
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="http://<head>:8265")
    parser.add_argument("--nodes", type=int, help="Ray Train workers (2 GPUs each unless cluster.gpus_per_worker)")
    parser.add_argument("--no-follow", action="store_true", help="submit and return")
    parser.add_argument("--kuberay", action="store_true", help="print a KubeRay RayJob manifest instead")
    parser.add_argument("--image", help="--kuberay: the container image with this repository installed")
    parser.add_argument("--secret", default="alexnet-credentials", help="--kuberay: Secret with the credentials")
    parser.add_argument("--namespace", help="--kuberay: the Kubernetes namespace")
    parser.add_argument("--out", help="--kuberay: write the manifest here instead of standard output")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for orchestrator.train")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    logging.getLogger("ray").setLevel(logging.ERROR)  # packaging chatter; our lines say what happens
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if not (args.address or args.kuberay):
            raise ConfigError(
                "no Ray cluster to submit to: set ADDRESS=http://<head>:8265 (make submit) or RAY_ADDRESS, the "
                "head node's dashboard"
            )
        job = compose_job(args.overrides, args.nodes)
        if args.kuberay:
            from orchestrator.kuberay import write_manifest

            return write_manifest(job, args.image, args.secret, args.namespace, args.out)
        job_id = submit(args.address, job)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    log.info("\n".join([f"submitted job {job_id} to {args.address}: run {job.config.run_name}", *job.where()]))
    if args.no_follow:
        log.info("\n".join(commands(args.address, job_id)))
        return 0
    try:
        code = follow(args.address, job_id)
    except KeyboardInterrupt:
        log.info("\n".join([f"job {job_id} keeps running on the cluster:", *commands(args.address, job_id)]))
        return 130
    log.info("job %s ended with exit code %d", job_id, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
