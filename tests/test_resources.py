"""Asking for more GPUs than the cluster has ends in one clear sentence, at once on an embedded
Ray (it has no autoscaler that could add nodes)."""

from __future__ import annotations

import time

import pytest
from conftest import compose, tiny_run_overrides

from orchestrator.config import ConfigError
from orchestrator.train import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_more_gpus_than_the_cluster_has(tiny_shards, tmp_path):
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # one (pretend) GPU
    try:
        cfg = compose(
            *tiny_run_overrides(tiny_shards, str(tmp_path)),
            "cluster.gpus_per_worker=2",
            "cluster.placement_timeout_s=60",
        )
        start = time.monotonic()
        with pytest.raises(
            ConfigError, match=r"needs 2 workers of .*2 GPU each, every worker on one node, .*1 GPU\) hold 0;"
        ):
            run(cfg)
        assert time.monotonic() - start < 15  # no wait for GPUs that cannot appear
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("gpus", "nodes", "per", "expected"),
    [
        (0, None, None, (2, 0)),  # a laptop: the demo's two CPU workers
        (1, None, None, (1, 1)),  # one GPU: one worker, both towers on it
        (2, None, None, (1, 2)),  # the paper's split
        (3, None, None, (1, 2)),
        (8, None, None, (4, 2)),
        (2, 4, None, (4, 2)),  # set by the user: kept, then refused if it cannot fit
        (1, None, 2, (1, 2)),
    ],
)
def test_an_embedded_ray_fits_the_demo_to_the_machine(gpus, nodes, per, expected):
    from orchestrator.launch.resources import fit_to_machine

    workers, gpus_per_worker, decided = fit_to_machine(nodes, per, gpus)
    assert (workers, gpus_per_worker) == expected
    assert "\n" not in decided and (f"{gpus} GPU" in decided or gpus == 0)


def test_one_gpu_machine_gets_one_worker_and_an_impossible_request_is_refused_at_once(tiny_shards, tmp_path):
    import ray

    from orchestrator.launch.prepare import prepare
    from orchestrator.launch.resources import scaling

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # one (pretend) GPU
    try:
        config = prepare(compose(*tiny_run_overrides(tiny_shards, str(tmp_path)), "cluster.nodes=null"))
        scaling_config, torch_config = scaling(config)
        assert (scaling_config.num_workers, scaling_config.resources_per_worker["GPU"]) == (1, 1)
        assert torch_config.backend == "nccl" and config.global_batch == config.batch_size
        config = prepare(compose(*tiny_run_overrides(tiny_shards, str(tmp_path)), "cluster.nodes=2"))
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"needs 2 workers of .*1 GPU each.* hold 1;"):
            scaling(config)
        assert time.monotonic() - start < 5
    finally:
        ray.shutdown()
