"""A real Ray cluster: a head and a second node as separate `ray start` processes joined by
address (own ports, own temp dir), a job submitted through Ray Jobs with `make submit`'s
module, its two workers spread one per node. Only the processes this test started are stopped."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from conftest import REPO, free_port, tiny_run_overrides

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def node_ports() -> list[str]:
    """Every port a node opens by default at a fixed number, so two nodes on one machine
    (and any other Ray here) never collide."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def ray_start(args: list[str], log: str, env: dict) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *node_ports(), *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def wait_for_nodes(
    dashboard: str, count: int, started: list[subprocess.Popen], token: str, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(proc.poll() is None for proc in started), "a `ray start` ended; see head.log / node.log"
        try:
            headers = {"Authorization": f"Bearer {token}"}
            request = urllib.request.Request(f"{dashboard}/nodes?view=summary", headers=headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                summary = json.load(response)["data"]["summary"]
            if sum(1 for node in summary if node["raylet"]["state"] == "ALIVE") >= count:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"the Ray cluster never had {count} nodes alive")


def read(metrics: str) -> list[dict]:
    if not os.path.exists(metrics):
        return []
    with open(metrics) as f:
        return [json.loads(line) for line in f if line.strip()]


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each `ray start --block`: it stops the Ray processes it started, no others."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_job_submitted_to_a_two_node_cluster_runs_one_worker_per_node(tiny_shards, tmp_path):
    # `python` in the job's entrypoint is this environment's, as on a cluster built from one image
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    started: list[subprocess.Popen] = []
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # A cluster with token authentication, as Ray's docs set one up: every node and the machine
    # that submits hold the token (its own here: ~/.ray is left alone).
    token = secrets.token_hex(32)
    with open(os.path.join(temp, "auth_token"), "w") as f:
        f.write(token)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=os.path.join(temp, "auth_token"))
    try:
        started.append(
            ray_start(
                [
                    "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={temp}", "--num-cpus=1",
                ],
                str(tmp_path / "head.log"), env,
            )
        )  # fmt: skip
        wait_for_nodes(dashboard, 1, started, token)
        started.append(ray_start([f"--address=127.0.0.1:{gcs}", "--num-cpus=1"], str(tmp_path / "node.log"), env))
        wait_for_nodes(dashboard, 2, started, token)

        runs = str(tmp_path / "runs")
        overrides = tiny_run_overrides(tiny_shards, runs, run_name="two-nodes", epochs=1)
        overrides += ["cluster.gpus_per_worker=0", "cluster.cpus_per_worker=1", "cluster.placement_strategy=SPREAD"]
        submitted = subprocess.run(
            [sys.executable, "-m", "orchestrator.submit", "--address", dashboard, "--nodes", "2", *overrides],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        said = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, said[-4000:]
        assert "submitted job" in said and f"run folder  {runs}/two-nodes" in said
        assert "run two-nodes: finished" in said  # the job's own summary, followed to its end

        record = read(os.path.join(runs, "two-nodes", "metrics.jsonl"))
        workers = [line for line in record if line.get("event") == "worker"]
        assert sorted(w["rank"] for w in workers) == [0, 1]
        assert len({w["node"] for w in workers}) == 2, workers  # SPREAD: one worker per node
        assert all(w["devices"] == ["cpu"] for w in workers)
        assert record[-1]["event"] == "finished"
        assert any(name.startswith("checkpoint_") for name in os.listdir(os.path.join(runs, "two-nodes")))

        # A sweep none of whose runs the cluster can hold ends in one line, before any trial starts:
        # what one run needs, what the nodes have.
        before = set(os.listdir(runs))
        sweep = subprocess.run(
            [sys.executable, "-m", "orchestrator.train", "-m", "optim.lr=0.1,0.2", f"cluster.address=127.0.0.1:{gcs}",
             *tiny_run_overrides(tiny_shards, runs), "cluster.gpus_per_worker=0", "cluster.cpus_per_worker=2",
             "cluster.placement_timeout_s=1", f"hydra.sweep.dir={tmp_path}/sweep"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert sweep.returncode == 2, sweep.stderr[-3000:]
        last = sweep.stderr.strip().splitlines()[-1]
        assert "no run of this sweep can start: the job needs 2 workers of 2 CPU each" in last, last
        assert "(1 CPU; 1 CPU) hold 0" in last, last
        assert set(os.listdir(runs)) == before  # nothing was started

        # `ray job stop` (SIGTERM to the driver, SIGKILL after RAY_JOB_STOP_WAIT_TIME_S): the run
        # checkpoints where it is and ends `stopped`, not killed.
        overrides = tiny_run_overrides(tiny_shards, runs, run_name="stopped", epochs=30, log_every_steps=1)
        overrides += ["cluster.gpus_per_worker=0", "cluster.cpus_per_worker=1"]
        submitted = subprocess.run(
            [sys.executable, "-m", "orchestrator.submit", "--address", dashboard, "--no-follow", *overrides],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        job_id = re.search(r"submitted job (\S+)", submitted.stdout + submitted.stderr).group(1)
        metrics = os.path.join(runs, "stopped", "metrics.jsonl")
        deadline = time.monotonic() + 240
        while max((line.get("step", 0) for line in read(metrics)), default=0) < 3:
            assert time.monotonic() < deadline, "the second job never trained"
            time.sleep(0.5)
        subprocess.run([RAY, "job", "stop", "--address", dashboard, job_id], env=env, check=True, timeout=300)
        end = read(metrics)[-1]
        assert end["event"] == "stopped" and end["step"] >= 3, end
    finally:
        stop(started)
        shutil.rmtree(temp, ignore_errors=True)
