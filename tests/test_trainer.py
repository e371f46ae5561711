"""The Trainer without Ray: plain torch.distributed (gloo) with one and two processes, the
collective rule under NCCL, and metrics summed over every rank."""

from __future__ import annotations

import contextlib
import glob
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose, free_port, tiny_run_overrides

from orchestrator.config import TrainConfig
from orchestrator.launch.prepare import prepare
from orchestrator.launch.torchrun import fit
from orchestrator.runs.record import RunRecord
from orchestrator.worker import checkpoint
from orchestrator.worker.cluster import Cluster
from orchestrator.worker.meter import Meter


def config(shards: str, runs: str, **extra) -> TrainConfig:
    extra = {"logger.mode": "disabled", "cluster.nodes": 1, **extra}
    return prepare(compose(*tiny_run_overrides(shards, runs, **extra)))


def lines(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_one_process_trains_checkpoints_and_resumes(tiny_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    runs = str(tmp_path / "runs")
    fit(config(tiny_shards, runs, run_name="plain", epochs=1))
    record = lines(os.path.join(runs, "plain"))
    assert record[-1]["event"] == "finished"
    vals = [line for line in record if "val/top1" in line]
    assert len(vals) == 1 and vals[0]["val/images"] == 40
    ckpts = sorted(glob.glob(os.path.join(runs, "plain", "checkpoint_*")))
    assert len(ckpts) == 2  # checkpoint.keep
    state = checkpoint.load(ckpts[-1])
    assert state["position"]["epoch"] == 1 and state["metrics"]["val/top1"] == vals[0]["val/top1"]
    best = checkpoint.load(os.path.join(runs, "plain", "best"))  # a copy of the epoch's checkpoint
    assert torch.equal(best["model"]["tower_a.fc8.weight"], state["model"]["tower_a.fc8.weight"])
    steps = state["position"]["step"]

    fit(config(tiny_shards, runs, run_name="plain", epochs=2, resume="true"))
    record = lines(os.path.join(runs, "plain"))
    assert [line["step"] for line in record if line.get("event") == "resumed"] == [steps]
    assert max(line["epoch"] for line in record if "val/top1" in line) == 1


def test_until_epoch_pauses_and_the_resumed_run_equals_the_uninterrupted_one(tiny_shards, tmp_path, monkeypatch):
    """How a sweep's synchronous halving holds a run at a rung: it pauses with a checkpoint, and
    resume=true continues it as if it had never paused (same losses, same accuracy)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    runs = str(tmp_path / "runs")
    fit(config(tiny_shards, runs, run_name="whole", epochs=2))
    fit(config(tiny_shards, runs, run_name="held", epochs=2, until_epoch=1))
    record = RunRecord.read(os.path.join(runs, "held"))
    assert record.status == "paused after epoch 1" and record.epochs_done() == 1
    fit(config(tiny_shards, runs, run_name="held", epochs=2, resume="true"))
    record = RunRecord.read(os.path.join(runs, "held"))
    assert record.status == "finished" and record.epochs_done() == 2
    whole = RunRecord.read(os.path.join(runs, "whole"))
    for key in ("train/loss", "val/top1", "val/loss"):
        assert [line[key] for line in record.metric_lines(key)] == [line[key] for line in whole.metric_lines(key)]
    # its time is the two launches' own, not the gap between them
    launches = [line["time"] for line in record.lines if line.get("event") == "launched"]
    assert len(launches) == 2
    assert record.seconds() < record.lines[-1]["time"] - launches[0]


def _rank(rank: int, world: int, name: str, shards: str, runs: str, port: int) -> None:
    """One of `world` torch.distributed processes of run `name` (mp.spawn's target)."""
    os.environ["MASTER_PORT"] = str(port)
    fit(config(shards, runs, run_name=name, **{"cluster.nodes": world}), rank=rank, world=world)


@pytest.mark.timeout(300)
def test_two_processes_train_one_model_with_ddp(tiny_shards, tmp_path):
    runs = str(tmp_path / "runs")
    mp.spawn(_rank, args=(2, "two", tiny_shards, runs, free_port()), nprocs=2)
    record = lines(os.path.join(runs, "two"))
    assert record[-1]["event"] == "finished"
    train = [line for line in record if "train/loss" in line]
    steps = 160 // 2 // 8  # every rank: its half of the train split in batches of 8
    assert max(line["step"] for line in train) == steps
    assert all(line["images_per_s"] > 0 for line in train)
    assert [line["val/images"] for line in record if "val/top1" in line] == [40]  # both halves of val


@pytest.mark.timeout(300)
def test_three_processes_on_uneven_shards_finish(tiny_shards, tmp_path):
    """4 shards over 3 ranks: one rank holds two. Equal batch counts keep DDP from hanging."""
    runs = str(tmp_path / "runs")
    mp.spawn(_rank, args=(3, "uneven", tiny_shards, runs, free_port()), nprocs=3)
    record = lines(os.path.join(runs, "uneven"))
    assert record[-1]["event"] == "finished"
    assert max(line["step"] for line in record if "train/loss" in line) == 160 // 3 // 8


class FakeNccl(Cluster):
    """A cluster whose process group reports the NCCL backend, with a non-CPU device (meta),
    recording the device of every tensor that reaches a collective."""

    def __init__(self) -> None:
        self.devices = [torch.device("meta")]
        self.seen: list[torch.device] = []


class Recorded(Exception):
    """Raised by the fake collective once it has seen its tensor (meta tensors hold no values)."""


def test_every_collective_tensor_lives_on_the_nccl_device(monkeypatch):
    """NCCL serves CUDA tensors only: a CPU tensor in all_reduce raises on every GPU run. With
    the backend reported as nccl and the loop's device not the CPU, the metric collective of a
    log step and of validation must both hand over tensors on that device."""
    from orchestrator.worker.evaluation import evaluate

    cluster = FakeNccl()

    def all_reduce(tensor, *args, **kwargs):
        cluster.seen.append(tensor.device)
        raise Recorded

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    meta = torch.device("meta")
    meter = Meter(meta, cluster.all_reduce, max_skipped_fraction=0.5)
    logits = torch.zeros(4, 10, device=meta)
    meter.add(torch.zeros((), device=meta), logits, torch.zeros(4, dtype=torch.long, device=meta), 1, 0.0)
    with pytest.raises(Recorded):
        meter.read()

    class Transform:
        device = meta

        def __call__(self, images, train):
            return torch.zeros(len(images), 3, 8, 8, device=meta)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)).to(meta)
    batches = [(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(Recorded):
        evaluate(model, batches, Transform(), contextlib.nullcontext, cluster.all_reduce)
    assert cluster.seen == [meta, meta]


def _sum_metrics(rank: int, port: int, out: str) -> None:
    """Rank r sees 4 batches of 8 with loss r + 1 and all 8 (rank 0) or none (rank 1) right."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    gloo = Cluster()
    gloo.devices = [torch.device("cpu")]
    meter = Meter(torch.device("cpu"), gloo.all_reduce, max_skipped_fraction=1.0)
    labels = torch.arange(8) % 10
    logits = torch.nn.functional.one_hot(labels if rank == 0 else (labels + 1) % 10, 10).float()
    for _ in range(4):
        meter.add(torch.tensor(float(rank + 1)), logits, labels, skipped=rank, waited=0.0)
    metrics = meter.read()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(metrics, f)
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_train_metrics_are_summed_over_every_rank(tmp_path):
    out = str(tmp_path / "metrics.json")
    mp.spawn(_sum_metrics, args=(free_port(), out), nprocs=2)
    with open(out) as f:
        metrics = json.load(f)
    assert metrics["train/loss"] == pytest.approx(1.5)  # (4 x 1 + 4 x 2) / 8 batches
    assert metrics["train/top1"] == pytest.approx(0.5)  # 32 right of 64
    assert metrics["data/skipped"] == 4


def test_only_rank_zero_speaks_below_warnings(capsys):
    import logging

    from orchestrator.logs import setup

    try:
        setup(rank=1)
        logging.getLogger("orchestrator.trainer").info("a step line")
        logging.getLogger("orchestrator.data").warning("a damaged shard")
        out, err = capsys.readouterr()
        assert "a step line" not in out and err == "warning: a damaged shard\n"
        setup(rank=0)
        logging.getLogger("orchestrator.trainer").info("a step line")
        assert capsys.readouterr().out == "a step line\n"
    finally:
        setup(rank=0)


def test_profiling_the_towers_leaves_training_unchanged(tiny_shards, tmp_path, monkeypatch):
    """On the split path, every perf.profile_every_steps steps one batch is also run with the
    towers and crossings timed apart: the figures reach the metrics, the losses stay the same."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    runs = str(tmp_path / "runs")
    common = {"model.placement": "split", "log_every_steps": 1}
    fit(config(tiny_shards, runs, run_name="profiled", **common, **{"perf.profile_every_steps": 3}))
    fit(config(tiny_shards, runs, run_name="plain", **common, **{"perf.profile_every_steps": 0}))
    profiled, plain = lines(os.path.join(runs, "profiled")), lines(os.path.join(runs, "plain"))
    profiles = [line for line in profiled if "perf/tower_a_ms" in line]
    assert [line["step"] for line in profiles] == [2, 5, 8, 11, 14, 17]  # before steps 3, 6, ...
    assert all(0 < line["perf/crossing_share"] < 1 and line["perf/tower_b_ms"] > 0 for line in profiles)

    def losses(record):
        return [(line["step"], line["train/loss"]) for line in record if "train/loss" in line]

    assert losses(profiled) == losses(plain)
    speed = next(line for line in plain if "perf/mfu" in line)
    assert 0 < speed["perf/mfu"] < 1 and speed["perf/eta_run_s"] >= speed["perf/eta_epoch_s"] >= 0


def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tiny_shards, tmp_path, monkeypatch, capsys):
    """The newest checkpoint's state.pt truncated (a partial copy, bit rot): resume goes on from
    the one before, with a warning naming the damaged one; with every one damaged, one sentence
    says how to start over."""
    from orchestrator.config import ConfigError

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    runs = str(tmp_path / "runs")
    fit(config(tiny_shards, runs, run_name="rot", **{"checkpoint.every_steps": 6}))
    names = sorted(glob.glob(os.path.join(runs, "rot", "checkpoint_*")))
    assert len(names) == 2
    older_step = checkpoint.load(names[0])["position"]["step"]
    state = os.path.join(names[-1], checkpoint.STATE_FILE)
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    capsys.readouterr()
    fit(config(tiny_shards, runs, run_name="rot", resume="true", epochs=2))
    assert f"checkpoint {os.path.basename(names[-1])} of run rot is damaged" in capsys.readouterr().err
    record = lines(os.path.join(runs, "rot"))
    assert [line["step"] for line in record if line.get("event") == "resumed"] == [older_step]
    assert record[-1]["event"] == "finished"

    for name in glob.glob(os.path.join(runs, "rot", "checkpoint_*")):
        with open(os.path.join(name, checkpoint.STATE_FILE), "ab") as f:
            f.write(b"rot")
    refusal = r"^every checkpoint of run rot is damaged .*start over with another run_name"
    with pytest.raises(ConfigError, match=refusal):
        fit(config(tiny_shards, runs, run_name="rot", resume="true", epochs=3))


def test_a_run_on_s3_keeps_every_metric_line(tiny_shards, s3_bucket, tmp_path, monkeypatch):
    """One writer per run record: the launch's events, rank 0's metrics and the end all land in
    one metrics.jsonl on object storage (two writers each rewrote the file from their own copy)."""
    import s3fs

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    bucket, options = s3_bucket
    cfg = compose(*tiny_run_overrides(tiny_shards, f"s3://{bucket}/runs", run_name="s3", epochs=1,
                                      **{"logger.mode": "disabled", "cluster.nodes": 1}))  # fmt: skip
    cfg.storage.options = options
    assert fit(prepare(cfg)) == 0
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    record = [json.loads(line) for line in fs.cat(f"{bucket}/runs/s3/metrics.jsonl").decode().splitlines()]
    events = [line["event"] for line in record if "event" in line]
    assert events[0] == "launched" and events[-1] == "finished"
    steps = 160 // 8
    assert [line["step"] for line in record if "train/loss" in line] == list(range(2, steps + 1, 2))
    assert len([line for line in record if "val/top1" in line]) == 1
