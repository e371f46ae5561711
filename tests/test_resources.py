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
