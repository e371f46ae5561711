"""`make gpu-check DRY=1`: the GPU check's every step, on the CPU at toy sizes, so the script a
GPU machine runs keeps working between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_dry_run_composes_every_step(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.tools.gpu_check", "--dry-run", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=500, env={**os.environ, "MASTER_PORT": "29561"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["tests", "shards", "train", "bench", "data"]
    assert all(step["status"] == "ok" for step in steps.values())
    assert "skipped" in steps["tests"]["pytest"]  # the CUDA tests are collected, and skip here
    train = steps["train"]
    assert train["backend"] == "gloo" and train["resumed_at_step"] > 0 and train["train_images_per_s"] > 0
    assert steps["bench"]["ours_bf16_images_per_s"] > 0 and steps["data"]["gpu_decode"].startswith("skipped")


def test_without_cuda_the_real_run_says_what_to_do(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.tools.gpu_check", "--out", str(tmp_path / "x.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: no CUDA device here; run make gpu-check DRY=1 to check the script itself"
    )


def test_the_benchmarked_net_runs_where_its_weights_are():
    """The bench moves models with .to(device); ours must also be placed there, or its forward
    would send the input back to the CPU (what a GPU run would have hit)."""
    import torch

    from orchestrator.tools.gpu_check import ours

    model = ours("cpu")
    assert model.placement.tower_a == torch.device("cpu") and not model.placement.fused
    assert model.lrn.mode == "compiled"
