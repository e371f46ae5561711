"""A run on a remote Ray cluster through Ray Jobs (the head's dashboard, port 8265): the config
checked here, this repository shipped as the working directory, the log followed."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys

from orchestrator import storage
from orchestrator.config import REPO_ROOT, ConfigError, register, validate
from orchestrator.launch.remote.job_spec import STOP_WAIT_S, Job

log = logging.getLogger(__name__)


def compose_job(overrides: list[str], nodes: int | None) -> Job:
    """The run's config as the cluster will see it, checked here before anything is shipped:
    `cluster=ray`, the node count, and a fixed run name (so it can be named now)."""
    register()  # the schema conf/train.yaml composes onto
    from hydra import compose, initialize_config_dir

    from orchestrator.launch.overrides import override_problem
    from orchestrator.launch.prepare import default_run_name

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
    from orchestrator.launch.ray_job import SHIP_EXCLUDES

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
