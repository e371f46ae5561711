"""Stopping without loss: Ctrl-C to the terminal's process group (Ray driver) and SIGTERM (a
scheduler, torchrun) checkpoint the current step, mark the run stopped and exit 130/143; a
resume then repeats the uninterrupted run's losses exactly. And nothing staged is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, compose, free_port, tiny_run_overrides

from orchestrator.launch.prepare import prepare
from orchestrator.launch.torchrun import fit
from orchestrator.runs.folder import RunFolder
from orchestrator.train import run
from orchestrator.worker import checkpoint
from orchestrator.worker import signals as stopping
from orchestrator.worker.torch_cluster import TorchCluster


def lines(run_dir: str) -> list[dict]:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def losses(record: list[dict]) -> dict[int, float]:
    return {line["step"]: line["train/loss"] for line in record if "train/loss" in line}


def start(module: str, overrides: list[str], log: str) -> subprocess.Popen:
    """The command a user types, in a session of its own: os.killpg then does what Ctrl-C in a
    terminal does (the signal reaches every process of the foreground group)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *overrides], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def tail(log: str) -> str:
    with open(log) as f:
        return f.read()[-3000:]


def signal_at_step(proc: subprocess.Popen, run_dir: str, step: int, signum: int, log: str) -> int:
    deadline = time.monotonic() + 240
    while max(losses(lines(run_dir)), default=0) < step:
        assert proc.poll() is None, tail(log)
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.2)
    os.killpg(proc.pid, signum)
    return proc.wait(timeout=180)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_checkpoints_the_current_step_and_resume_repeats_the_uninterrupted_run(local_ray, tiny_shards, tmp_path):
    runs = str(tmp_path / "runs")
    common = {"epochs": 4, "log_every_steps": 1, "checkpoint.every_steps": 1000, "data.workers": 1}
    run(compose(*tiny_run_overrides(tiny_shards, runs, run_name="clean", **common)))
    clean = losses(lines(os.path.join(runs, "clean")))

    stopped_dir, log = os.path.join(runs, "stopped"), str(tmp_path / "driver.log")
    driver = start("orchestrator.train", tiny_run_overrides(tiny_shards, runs, run_name="stopped", **common), log)
    assert signal_at_step(driver, stopped_dir, 5, signal.SIGINT, log) == 130, tail(log)
    record = lines(stopped_dir)
    end = record[-1]
    assert end["event"] == "stopped" and 5 < end["step"] < max(clean), end  # mid-run, a few steps on
    assert "finished" not in {line.get("event") for line in record}
    assert f"run stopped: stopped at step {end['step']}" in tail(log)
    assert not os.path.exists(os.path.join(stopped_dir, "stop"))  # answered, not left for the resume

    run(compose(*tiny_run_overrides(tiny_shards, runs, run_name="stopped", resume="true", **common)))
    record = lines(stopped_dir)
    assert [line["step"] for line in record if line.get("event") == "resumed"] == [end["step"]]
    assert record[-1]["event"] == "finished"
    assert losses(record) == clean  # every step before and after the stop, exactly
    assert not os.path.exists(checkpoint.staging_root("stopped"))


@pytest.mark.timeout(300)
def test_sigterm_to_a_torch_distributed_worker_stops_it_resumably(tiny_shards, tmp_path, monkeypatch):
    """What torchrun forwards and Kubernetes sends: SIGTERM -> checkpoint here, exit 143."""
    # The clean run trains in this process, the stopped one in a fresh one: both must run the
    # compiled LRN, not this process's uncompiled fallback after the shapes earlier tests used
    torch._dynamo.reset()
    runs = str(tmp_path / "runs")
    common = {"epochs": 8, "log_every_steps": 1, "cluster.nodes": 1, "logger.mode": "disabled", "data.workers": 2}
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    fit(prepare(compose(*tiny_run_overrides(tiny_shards, runs, run_name="clean", **common))))
    clean = losses(lines(os.path.join(runs, "clean")))

    log = str(tmp_path / "local.log")
    overrides = tiny_run_overrides(tiny_shards, runs, run_name="term", **common)
    worker = start("orchestrator.local", overrides, log)
    assert signal_at_step(worker, os.path.join(runs, "term"), 3, signal.SIGTERM, log) == 143, tail(log)
    end = lines(os.path.join(runs, "term"))[-1]
    assert end["event"] == "stopped", end
    newest = RunFolder(runs, "term").checkpoints()[-1]
    assert checkpoint.load(os.path.join(runs, "term", newest))["position"]["step"] == end["step"]

    fit(prepare(compose(*tiny_run_overrides(tiny_shards, runs, run_name="term", resume="true", **common))))
    assert losses(lines(os.path.join(runs, "term"))) == clean


def test_a_second_signal_stops_at_once_but_a_repeat_of_the_first_does_not(monkeypatch):
    """The terminal and torchrun may both deliver one Ctrl-C: within a second it is one request."""
    asked = []
    signals = stopping.Signals(asked.append)
    try:
        clock = iter([100.0, 100.3, 102.0])
        monkeypatch.setattr(stopping.time, "monotonic", lambda: next(clock))
        signals._handle(signal.SIGTERM, None)
        signals._handle(signal.SIGINT, None)  # 0.3 s later: the same request
        assert asked == [signal.SIGTERM] and signals.received
        with pytest.raises(KeyboardInterrupt):
            signals._handle(signal.SIGINT, None)  # 2 s later: a second Ctrl-C
        assert signal.getsignal(signal.SIGINT) is signals.previous[signal.SIGINT]
    finally:
        signals.restore()


def test_staged_checkpoints_never_outlive_their_upload_or_their_process(tmp_path, monkeypatch):
    from orchestrator.worker import torch_cluster as cluster_module

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    name = f"staging-{os.getpid()}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root, other = checkpoint.staging_root(name), checkpoint.staging_root(f"{name}-stopped-trial")
    os.makedirs(os.path.join(root, f"{dead.pid}-left"))  # a killed worker's half-written copy
    os.makedirs(os.path.join(root, f"{os.getpid()}-mine"))  # a live process's: not touched
    os.makedirs(os.path.join(other, f"{dead.pid}-left"))  # another run's, which never restarts
    checkpoint.clear_stale()
    assert os.listdir(root) == [f"{os.getpid()}-mine"] and not os.path.exists(other)
    os.rmdir(os.path.join(root, f"{os.getpid()}-mine"))

    folder = RunFolder(str(tmp_path / "runs"), name)
    cluster = TorchCluster(folder, gpus_per_worker=0, keep=2)
    try:

        def unreachable(*args, **kwargs):
            raise OSError("the bucket is gone")

        monkeypatch.setattr(cluster_module.storage, "put_dir", unreachable)
        staged = checkpoint.stage(name)
        checkpoint.save(staged, model={"w": torch.zeros(3)})
        with pytest.raises(OSError):
            cluster.report({"step": 1}, staged)
        assert not os.path.exists(root)  # the upload failed for good; the copy is gone anyway
    finally:
        cluster.close()
