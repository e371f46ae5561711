"""Whole Ray Train jobs on the CPU: 2 workers x the two-tower mini net over tiny demo shards."""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os

import pytest
import torch
from conftest import compose, tiny_run_overrides
from wandb_records import artifacts, offline_run

from orchestrator.evaluate import run as evaluate_run
from orchestrator.launch.prepare import prepare
from orchestrator.runs.record import RunRecord
from orchestrator.train import run
from orchestrator.worker import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def best_epoch(vals: list[dict]) -> int:
    return max(vals, key=lambda v: v["val/top1"])["epoch"]


def lines(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_workers_train_checkpoint_and_log(local_ray, tiny_shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    best = run(compose(*tiny_run_overrides(tiny_shards, str(runs), run_name="e2e", epochs=2)))
    out = capsys.readouterr().out
    assert "run e2e: finished" in out and "val top-1" in out
    run_dir = runs / "e2e"
    record = lines(run_dir)
    vals = [line for line in record if "val/top1" in line]
    assert len(vals) == 2 and best == max(v["val/top1"] for v in vals)
    assert vals[-1]["val/images"] == 40  # the whole val split, once, across both workers
    assert any("train/loss" in line and "images_per_s" in line and "data_wait" in line for line in record)
    assert record[-1]["event"] == "finished"
    # checkpoints: Ray's rotating ones (keep=2) and the best; each loads with weights_only
    ckpts = sorted(p for p in glob.glob(str(run_dir / "checkpoint_*")) if os.path.isdir(p))
    assert len(ckpts) == 2
    state = checkpoint.load(ckpts[-1])
    assert state["position"]["epoch"] == 2 and state["position"]["batch"] == 0
    assert set(state) >= {"model", "optimizer", "schedule", "position", "config"}
    assert checkpoint.load(str(run_dir / "best"))["metrics"]["val/top1"] == best
    # an offline W&B run with the config, and the best checkpoint as a model artifact by reference
    # (read after Ray's background upload of best/ ended: W&B's digest is of the whole file)
    offline = glob.glob(str(run_dir / "wandb" / "offline-run-*"))
    assert len(offline) == 1 and glob.glob(offline[0] + "/run-*.wandb")
    (artifact,) = artifacts(offline_run(str(run_dir)))
    assert artifact["metadata"]["val/top1"] == best and artifact["metadata"]["epoch"] == best_epoch(vals) + 1
    entry = artifact["entries"][checkpoint.STATE_FILE]
    with open(run_dir / "best" / checkpoint.STATE_FILE, "rb") as f:
        assert entry["digest"] == base64.b64encode(hashlib.md5(f.read()).digest()).decode()
    assert RunRecord.read(str(run_dir)).config["optim"]["lr"] == 0.02
    # evaluate the checkpoint: centre and ten crops
    cfg = compose_evaluate(f"checkpoint={ckpts[-1]}", f"data.url={tiny_shards}", "eval.ten_crop=true")
    results = evaluate_run(cfg)
    assert results["centre crop"]["val/top1"] == pytest.approx(vals[-1]["val/top1"])
    assert set(results) == {"centre crop", "10-crop"}


def compose_evaluate(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return hydra_compose("evaluate", overrides=list(overrides))


def test_shards_and_checkpoints_on_s3(local_ray, tiny_shards, s3_bucket, tmp_path):
    import s3fs

    from shards.manifest import read_manifest

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    # copy the tiny shards into the bucket as the shard writer would publish them
    manifest = read_manifest(tiny_shards)
    for shard in manifest.splits["train"] + manifest.splits["val"]:
        fs.put_file(os.path.join(tiny_shards, shard.name), f"{bucket}/shards/{shard.name}")
    fs.pipe_file(f"{bucket}/shards/manifest.json", manifest.to_json().encode())
    cfg = compose(*tiny_run_overrides(f"s3://{bucket}/shards", f"s3://{bucket}/runs", run_name="s3run"))
    cfg.data.storage_options = options
    cfg.storage.options = options
    cfg.logger.dir = str(tmp_path / "wandb")
    run(cfg)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/runs/s3run")}
    assert {"metrics.jsonl", "config.yaml", "best"} <= names
    assert any(n.startswith("checkpoint_") for n in names)
    ckpt = sorted(n for n in names if n.startswith("checkpoint_") and not n.endswith(".json"))[-1]
    data = fs.cat(f"{bucket}/runs/s3run/{ckpt}/{checkpoint.STATE_FILE}")
    path = tmp_path / "state.pt"
    path.write_bytes(data)
    assert torch.load(path, weights_only=True)["position"]["epoch"] == 1
    assert "client_kwargs" in fs.cat(f"{bucket}/runs/s3run/config.yaml").decode()
    # one writer at a time: the driver's launch and end, rank 0's every metric line in between
    record = [json.loads(line) for line in fs.cat(f"{bucket}/runs/s3run/metrics.jsonl").decode().splitlines()]
    events = [line["event"] for line in record if "event" in line]
    assert events[0] == "launched" and events[-1] == "finished"
    assert [line["step"] for line in record if "train/loss" in line] == list(range(2, 160 // 2 // 8 + 1, 2))
    assert len([line for line in record if "val/top1" in line]) == 1
    (artifact,) = artifacts(offline_run(str(tmp_path / "wandb")))  # W&B points at the bucket
    assert artifact["entries"][checkpoint.STATE_FILE]["ref"] == f"s3://{bucket}/runs/s3run/best/{checkpoint.STATE_FILE}"


def test_resume_through_ray_skips_a_damaged_newest_checkpoint(local_ray, tiny_shards, tmp_path):
    """Ray hands the workers its newest registered checkpoint; when that one's state.pt is
    truncated, the run resumes from the intact one before it instead of failing three times."""
    runs = str(tmp_path / "runs")
    run(compose(*tiny_run_overrides(tiny_shards, runs, run_name="d", epochs=1)))
    names = sorted(p for p in glob.glob(os.path.join(runs, "d", "checkpoint_*")) if os.path.isdir(p))
    assert len(names) == 2
    older_step = checkpoint.load(names[0])["position"]["step"]
    state = os.path.join(names[-1], checkpoint.STATE_FILE)
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 3)
    with pytest.raises(Exception, match="resume=true"):  # an existing run is continued only when asked
        prepare(compose(*tiny_run_overrides(tiny_shards, runs, run_name="d", epochs=2)))
    run(compose(*tiny_run_overrides(tiny_shards, runs, run_name="d", epochs=2, resume="true")))
    record = lines(os.path.join(runs, "d"))
    assert [line["step"] for line in record if line.get("event") == "resumed"] == [older_step]
    assert record[-1]["event"] == "finished"
