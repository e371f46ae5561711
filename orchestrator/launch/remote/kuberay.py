"""A KubeRay `RayJob` (apiVersion ray.io/v1) for one training run, for `kubectl apply -f -`:
a head pod (driver and Ray Train's controller, no training) and a worker group of one pod per
Ray Train worker, each with the worker's GPUs (`nvidia.com/gpu: 2`, the paper's split). The job
runs the same entrypoint as `make submit`, from the image (this repository installed in it, see
Dockerfile); credentials come from a Kubernetes Secret by name, as environment variables, and
are never written into the manifest. The cluster is deleted when the job ends."""

from __future__ import annotations

import math
import re
import sys

import ray
import yaml

from orchestrator.config import ConfigError
from orchestrator.launch.remote.job_spec import STOP_WAIT_S, Job

# Seconds Kubernetes waits after SIGTERM (a `kubectl delete`, a preemption) before SIGKILL:
# time for the driver to have the workers write their checkpoint.
GRACE_S = STOP_WAIT_S
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}  # DataLoader and NCCL need more than 64 MB


def k8s_name(run_name: str) -> str:
    """A DNS-1123 name: lowercase letters, digits and '-', starting with a letter; short, as
    KubeRay derives its cluster's and pods' names from it."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"run-{name}"
    return name[:40].rstrip("-")


def container(name: str, image: str, secret: str, resources: dict) -> dict:
    return {
        "name": name,
        "image": image,
        "envFrom": [{"secretRef": {"name": secret}}],  # AWS_*, WANDB_API_KEY: never in the manifest
        "resources": {"limits": resources, "requests": resources},
        "volumeMounts": [{"name": SHM_VOLUME["name"], "mountPath": "/dev/shm"}],
    }


def pod(name: str, image: str, secret: str, resources: dict) -> dict:
    return {
        "spec": {
            "containers": [container(name, image, secret, resources)],
            "volumes": [SHM_VOLUME],
            "terminationGracePeriodSeconds": GRACE_S,
        }
    }


def manifest(job: Job, image: str, secret: str, namespace: str | None = None) -> dict:
    c = job.config
    if c.storage.url.startswith(("/", "file://")):
        raise ConfigError(
            f"storage.url={c.storage.url} is a local path, and a pod's disk goes with the pod; set storage.url to "
            "s3://... or gs://..."
        )
    workers, gpus = c.cluster.nodes or 2, c.cluster.gpus_per_worker if c.cluster.gpus_per_worker is not None else 2
    worker_resources = {"cpu": str(math.ceil(c.cluster.cpus_per_worker) + 2), "memory": "64Gi"}
    if gpus:
        worker_resources["nvidia.com/gpu"] = gpus
    metadata = {
        "name": k8s_name(c.run_name),
        "labels": {"app.kubernetes.io/name": "alexnet-orchestrator"},
        "annotations": {
            "alexnet-orchestrator/run": c.run_name,
            "alexnet-orchestrator/run-folder": job.run_url,
            "alexnet-orchestrator/wandb-project": c.logger.project,
        },
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": job.entrypoint,
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}}),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,  # the pods go; the run folder in object storage stays
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "rayVersion": ray.__version__,
                "headGroupSpec": {
                    # no Ray Train worker on the head: it holds the driver and the controller
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": pod("ray-head", image, secret, {"cpu": "4", "memory": "16Gi"}),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu-workers",
                        "replicas": workers,
                        "minReplicas": workers,
                        "maxReplicas": workers,
                        "rayStartParams": {},
                        "template": pod("ray-worker", image, secret, worker_resources),
                    }
                ],
            },
        },
    }


def write_manifest(job: Job, image: str | None, secret: str, namespace: str | None, out: str | None) -> int:
    if not image:
        raise ConfigError(
            "--kuberay needs the container image the pods run: add --image <registry>/alexnet-orchestrator:<tag> "
            "(built from this repository's Dockerfile)"
        )
    text = yaml.safe_dump(manifest(job, image, secret, namespace), sort_keys=False)
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}: kubectl apply -f {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
