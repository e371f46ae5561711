"""Credentials come from the environment only and never land in any output of a run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKESECRET7Q2W",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-9b1e7c3d5f",
    "WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd",
}


def files_under(root: str):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


def test_no_secret_reaches_any_output(tiny_shards, s3_bucket, tmp_path):
    import s3fs

    bucket, options = s3_bucket
    env = {**os.environ, **SECRETS}
    endpoint = options["client_kwargs"]["endpoint_url"]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.train", f"data.url={tiny_shards}", f"storage.url=s3://{bucket}/runs",
         f"+storage.options.client_kwargs.endpoint_url={endpoint}", "model.input_size=67", "batch_size=8",
         "epochs=1", "data.workers=0", "logger.mode=offline", "run_name=secret-check", "checkpoint.every_steps=4"],
        cwd=tmp_path, env=env, capture_output=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    outputs = {"stdout/stderr": proc.stdout + proc.stderr}
    for path in files_under(str(tmp_path)):  # the offline W&B run, Hydra's folder, anything local
        with open(path, "rb") as f:
            outputs[path] = f.read()
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    objects = fs.find(f"{bucket}/runs/secret-check")
    assert any(p.endswith("metrics.jsonl") for p in objects) and any(p.endswith("state.pt") for p in objects)
    for path in objects:  # metrics.jsonl, config.yaml, every checkpoint
        outputs[path] = fs.cat(path)
    assert any("offline-run" in p for p in outputs)
    for where, data in outputs.items():
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} found in {where}"
