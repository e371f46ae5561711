"""What a Ray Train job asks of the cluster: workers, GPUs and CPUs per worker, fitted to an
embedded Ray's machine or checked against a joined cluster's nodes before anything waits."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchConfig

from orchestrator.config import (
    ConfigError,
    TrainConfig,
)

log = logging.getLogger(__name__)

TRIAL_CPU = 0.01  # what a sweep's Tune trial (its driver function) holds; its workers ask for their own


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
        spare = total.get("CPU", 1) - TRIAL_CPU * config.sweep.parallel  # the trials' own share
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
