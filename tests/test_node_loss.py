"""Node loss on a simulated multi-node Ray cluster (ray.cluster_utils.Cluster, one machine)."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import compose, tiny_run_overrides
from test_failures import metrics, past_a_registered_checkpoint, wait_for

from orchestrator.train import run


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_loss_and_replacement(tiny_shards, tmp_path):
    """Two single-CPU nodes run one worker each; one node is removed mid-run and a new one
    added: Ray restarts the group on the new node and the run finishes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        runs = str(tmp_path / "runs")
        log = os.path.join(runs, "n", "metrics.jsonl")
        cfg = compose(*tiny_run_overrides(tiny_shards, runs, run_name="n", epochs=4, log_every_steps=1))
        job = threading.Thread(target=run, args=(cfg,))
        job.start()
        wait_for(lambda: past_a_registered_checkpoint(os.path.join(runs, "n")), 180, "a registered checkpoint")
        cluster.remove_node(nodes[1])
        cluster.add_node(num_cpus=1)
        job.join(timeout=400)
        assert not job.is_alive()
        lines = metrics(log)
        assert lines[-1]["event"] == "finished"
        assert any(line.get("event") == "resumed" for line in lines)
        assert len({line["epoch"] for line in lines if "val/top1" in line}) == 4
    finally:
        ray.shutdown()
        cluster.shutdown()
