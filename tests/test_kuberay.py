"""The KubeRay RayJob manifest: valid against the RayJob fields we use, with the worker pods'
GPUs, the run's entrypoint, and credentials only by Secret name."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from orchestrator.config import ConfigError
from orchestrator.launch.remote.kuberay import k8s_name, manifest
from orchestrator.launch.remote.ray_jobs import compose_job
from orchestrator.submit import main

DATA = "s3://bucket/imagenet-256"
# The RayJob fields this project writes, their types and which are required, as KubeRay v1.7.0's
# CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml, apiVersion ray.io/v1) states them:
# spec.rayClusterSpec requires headGroupSpec; a head group requires template; a worker group
# requires groupName, minReplicas, maxReplicas and template; a pod spec requires containers, a
# container its name; rayStartParams map strings to strings; resource quantities are integers
# or quantity strings; envFrom holds secretRef {name}.
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[mkMGTPE])?$"}]}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
CONTAINER = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "envFrom": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"secretRef": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "additionalProperties": False,
            },
        },
        "env": False,  # ours never inlines a variable: credentials come from the Secret
        "resources": {
            "type": "object",
            "properties": {
                "limits": {"type": "object", "additionalProperties": QUANTITY},
                "requests": {"type": "object", "additionalProperties": QUANTITY},
            },
        },
        "volumeMounts": {
            "type": "array",
            "items": {"type": "object", "required": ["mountPath", "name"]},
        },
    },
}
POD_TEMPLATE = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "terminationGracePeriodSeconds": {"type": "integer"},
            },
        }
    },
}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],  # ours always has both
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {"rayStartParams": STRING_MAP, "template": POD_TEMPLATE},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["groupName", "maxReplicas", "minReplicas", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer"},
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                    "rayStartParams": STRING_MAP,
                                    "template": POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_the_rayjob_manifest_validates_and_carries_the_run(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak-this-key")
    job = compose_job(["experiment=paper", f"data.url={DATA}", "storage.url=s3://bucket/runs", "run_name=Paper_4x2"], 4)
    rendered = manifest(job, "registry.example/alexnet-orchestrator:1", "alexnet-credentials", "ml")
    text = yaml.safe_dump(rendered)
    jsonschema.validate(yaml.safe_load(text), RAYJOB_SCHEMA)

    spec = rendered["spec"]
    assert "cluster=ray" in spec["entrypoint"] and "cluster.nodes=4" in spec["entrypoint"]
    assert "run_name=Paper_4x2" in spec["entrypoint"] and "experiment=paper" in spec["entrypoint"]
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert worker["envFrom"] == [{"secretRef": {"name": "alexnet-credentials"}}]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert rendered["metadata"]["name"] == "paper-4x2" and rendered["metadata"]["namespace"] == "ml"
    assert rendered["metadata"]["annotations"]["alexnet-orchestrator/run-folder"] == "s3://bucket/runs/Paper_4x2"
    assert "do-not-leak-this-key" not in text


def test_the_schema_catches_what_kuberay_would_refuse():
    job = compose_job([f"data.url={DATA}", "storage.url=s3://bucket/runs", "run_name=r"], nodes=2)
    good = manifest(job, "img", "s", None)
    broken = yaml.safe_load(yaml.safe_dump(good))
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"]
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate(broken, RAYJOB_SCHEMA)
    inlined = yaml.safe_load(yaml.safe_dump(good))
    inlined["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}
    ]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(inlined, RAYJOB_SCHEMA)


def test_names_and_refusals(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert k8s_name("sweep_3_optim.lr=0.01") == "sweep-3-optim-lr-0-01"
    assert k8s_name("2026-run") == "run-2026-run"
    job = compose_job([f"data.url={DATA}", "storage.url=/mnt/runs", "run_name=r"], nodes=2)
    with pytest.raises(ConfigError, match="a pod's disk goes with the pod"):
        manifest(job, "img", "s", None)
    assert main(["--kuberay", f"data.url={DATA}", "storage.url=s3://b/runs"]) == 2
    assert "--kuberay needs the container image" in capsys.readouterr().err
    assert main([f"data.url={DATA}", "storage.url=s3://b/runs"]) == 2  # no ADDRESS, no RAY_ADDRESS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set ADDRESS=http://<head>:8265" in err
    assert main(["--address", "http://127.0.0.1:9", "storage.url=s3://b/runs", "data.url=data/shards/demo"]) == 2
    assert "is in this repository, which the cluster does not get" in capsys.readouterr().err
