"""How gradients cross workers (orchestrator/worker/gradients.py), with two gloo processes: the
compression hooks train, and PowerSGD's state and accumulated steps survive a resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import compose, free_port, tiny_run_overrides

from orchestrator.launch.prepare import prepare
from orchestrator.launch.torchrun import fit
from orchestrator.worker import checkpoint


def config(shards: str, runs: str, **extra):
    extra = {"logger.mode": "disabled", "cluster.nodes": 2, "log_every_steps": 1, **extra}
    return prepare(compose(*tiny_run_overrides(shards, runs, **extra)))


def _rank(rank: int, shards: str, runs: str, port: int, extra: dict) -> None:
    os.environ["MASTER_PORT"] = str(port)
    fit(config(shards, runs, **extra), rank=rank, world=2)


def two_ranks(shards: str, runs: str, **extra) -> list[dict]:
    mp.spawn(_rank, args=(shards, runs, free_port(), extra), nprocs=2)
    with open(os.path.join(runs, extra["run_name"], "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(record: list[dict]) -> dict[int, float]:
    return {line["step"]: line["train/loss"] for line in record if "train/loss" in line}


@pytest.mark.timeout(300)
def test_a_16_bit_all_reduce_trains(tiny_shards, tmp_path):
    """bf16 (fp16 goes through the same PyTorch helper, _compress_hook)."""
    record = two_ranks(tiny_shards, str(tmp_path), run_name="bf16", **{"ddp.comm_hook": "bf16"})
    assert record[-1]["event"] == "finished"
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses(record).values())


@pytest.mark.timeout(400)
def test_powersgd_and_accumulation_resume_where_the_uninterrupted_run_goes(tiny_shards, tmp_path):
    """Rank-2 PowerSGD from step 2, two batches per step: 5 steps an epoch. A run cut after
    epoch 1 and resumed takes the uninterrupted run's steps (to float rounding: its checkpoint
    holds the ranks' mean error feedback, not each rank's); without the hook's state it does not."""
    runs = str(tmp_path)
    common = {"ddp.comm_hook": "powersgd", "ddp.powersgd_rank": 2, "ddp.powersgd_start_step": 2,
              "optim.accumulate": 2, "schedule.name": "step", "checkpoint.every_steps": 1000}  # fmt: skip
    clean = losses(two_ranks(tiny_shards, runs, run_name="clean", epochs=2, **common))
    assert sorted(clean) == list(range(1, 11))  # 160 samples / 2 ranks / batch 8 / 2 per step

    two_ranks(tiny_shards, runs, run_name="cut", epochs=1, **common)
    (epoch_end,) = [d for d in os.listdir(os.path.join(runs, "cut")) if d.startswith("checkpoint_")][-1:]
    saved = checkpoint.load(os.path.join(runs, "cut", epoch_end))
    assert saved["position"]["step"] == 5 and saved["comm_hook"]["parameters"]  # error feedback kept

    resumed = losses(two_ranks(tiny_shards, runs, run_name="cut", epochs=2, resume="true", **common))
    after = range(6, 11)
    assert [resumed[s] for s in after] == pytest.approx([clean[s] for s in after], rel=1e-4)

    # the same resume from a checkpoint without the hook's state goes elsewhere
    state_file = os.path.join(runs, "cut", epoch_end, checkpoint.STATE_FILE)
    del saved["comm_hook"]
    torch.save(saved, state_file)
    os.remove(os.path.join(runs, "cut", epoch_end, checkpoint.CHECKSUM_FILE))  # a pre-checksum checkpoint
    for newer in sorted(d for d in os.listdir(os.path.join(runs, "cut")) if d.startswith("checkpoint_")):
        if newer > epoch_end:
            import shutil

            shutil.rmtree(os.path.join(runs, "cut", newer))
    forgot = losses(two_ranks(tiny_shards, runs, run_name="cut", epochs=2, resume="true", **common))
    assert [forgot[s] for s in after] != pytest.approx([clean[s] for s in after], rel=1e-4)
