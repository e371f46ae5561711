"""What a run leaves in W&B, read back from the offline run's own records (what `wandb sync`
uploads): the best checkpoint as a model artifact by reference, and a stopped run's state."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
import torch
from conftest import compose, tiny_run_overrides
from wandb_records import artifacts, exit_code, offline_run, summary, tags

from orchestrator import storage
from orchestrator.launch.prepare import prepare
from orchestrator.runs.folder import RunFolder
from orchestrator.runs.tracking import Tracker
from orchestrator.worker import checkpoint


def tracker(shards: str, runs: str, wandb_dir: str, **options) -> Tracker:
    cfg = compose(*tiny_run_overrides(shards, runs, run_name="tracked", **{"logger.dir": wandb_dir}))
    cfg.storage.options = options
    config = prepare(cfg)
    return Tracker(config, RunFolder(config.storage.url, config.run_name, options))


def best_folder(path: str) -> str:
    os.makedirs(path)
    checkpoint.save(path, model={"w": torch.arange(1000.0)}, metrics={"val/top1": 0.42})
    return path


def test_the_best_checkpoint_is_referenced_not_uploaded(tiny_shards, tmp_path):
    runs = str(tmp_path / "runs")
    track = tracker(tiny_shards, runs, str(tmp_path / "wandb"))
    best = best_folder(os.path.join(runs, "tracked", "best"))
    track.checkpoint(best, **{"val/top1": 0.42, "epoch": 3})
    track.finish()
    (artifact,) = artifacts(offline_run(os.path.join(runs, "tracked")))
    assert artifact["type"] == "model" and "best" in artifact["aliases"]
    assert artifact["metadata"]["val/top1"] == 0.42 and artifact["metadata"]["epoch"] == 3
    with open(os.path.join(best, checkpoint.STATE_FILE), "rb") as f:
        content = f.read()
    assert artifact["metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
    state = artifact["entries"][checkpoint.STATE_FILE]
    assert state["ref"] == "file://" + os.path.join(best, checkpoint.STATE_FILE)
    assert state["digest"] == base64.b64encode(hashlib.md5(content).digest()).decode()  # W&B read the file
    assert set(artifact["entries"]) == {checkpoint.STATE_FILE, checkpoint.CHECKSUM_FILE}
    with open(os.path.join(runs, "tracked", "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    assert [e["artifact"] for e in events if e.get("event") == "artifact"] == [artifact["name"]]


@pytest.mark.parametrize("wandb_knows_the_endpoint", [True, False])
def test_a_checkpoint_on_s3_is_referenced_by_its_url(tiny_shards, tmp_path, s3_bucket, monkeypatch,
                                                     wandb_knows_the_endpoint):  # fmt: skip
    """W&B's S3 client finds a custom endpoint only in AWS_S3_ENDPOINT_URL: with it the entry's
    digest is the object's ETag; without it W&B is not sent to AWS, the reference is kept
    without a digest, and our sha256 in the metadata still identifies the file."""
    bucket, options = s3_bucket
    if wandb_knows_the_endpoint:
        monkeypatch.setenv("AWS_S3_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
    runs = f"s3://{bucket}/runs"
    track = tracker(tiny_shards, runs, str(tmp_path / "wandb"), **options)
    local = best_folder(str(tmp_path / "best"))
    storage.put_dir(local, f"{runs}/tracked/best", options)
    track.checkpoint(f"{runs}/tracked/best", **{"val/top1": 0.5})
    track.finish()
    (artifact,) = artifacts(offline_run(str(tmp_path / "wandb")))
    state = artifact["entries"][checkpoint.STATE_FILE]
    assert state["ref"] == f"{runs}/tracked/best/{checkpoint.STATE_FILE}"
    with open(os.path.join(local, checkpoint.STATE_FILE), "rb") as f:
        content = f.read()
    assert artifact["metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
    if wandb_knows_the_endpoint:
        assert state["digest"].strip('"') == hashlib.md5(content).hexdigest()  # a single-part upload's ETag
    else:
        assert state["digest"] == state["ref"]


def test_a_run_stopped_early_finishes_cleanly_and_says_so(tiny_shards, tmp_path):
    """W&B has no stopped state: the run finishes (exit code 0, not crashed or failed) with the
    reason in its summary and tags."""
    runs = str(tmp_path / "runs")
    track = tracker(tiny_shards, runs, str(tmp_path / "wandb"))
    track.finish(status="stopped early", stopped_at_epoch=2)
    records = offline_run(os.path.join(runs, "tracked"))
    assert "stopped early" in tags(records)
    assert summary(records)["status"] == "stopped early" and summary(records)["stopped_at_epoch"] == 2
    assert exit_code(records) == 0
