"""python -m orchestrator.submit [--address URL] [--nodes N] [overrides]: a training run on a
remote Ray cluster through Ray Jobs (the head's dashboard, port 8265), from any machine that can
reach it. This repository travels as the job's working directory (data/, runs/, .venv/ left
out); the job's driver is `python -m orchestrator.train cluster=ray ...` on the head node; this
command prints where the run's folder and W&B run will be, then follows the job's log until it
ends and exits with the job's exit code. Ctrl-C here leaves the job running.

`--kuberay` renders a KubeRay RayJob manifest instead (orchestrator/launch/remote/kuberay.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from orchestrator.config import ConfigError
from orchestrator.launch.remote.ray_jobs import commands, compose_job, follow, submit
from orchestrator.logs import setup as setup_logging

log = logging.getLogger("orchestrator.submit")


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
            from orchestrator.launch.remote.kuberay import write_manifest

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
