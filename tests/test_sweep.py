"""Hydra multirun sweeps end to end: one run per job, grouped, failures recorded, compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image

from orchestrator.compare import main as compare

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=800,
    )


def tiny(shards: str, runs: str) -> list[str]:
    return [
        f"data.url={shards}",
        f"storage.url={runs}",
        "model.input_size=67",
        "batch_size=8",
        "epochs=1",
        "data.workers=0",
        "logger.mode=offline",
        "log_every_steps=5",
        f"hydra.sweep.dir={runs}/.sweep",
    ]


def test_lr_by_dropout_sweep_with_a_failing_job(tiny_shards, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    proc = train("-m", "optim.lr=0.02,0.01", "model.dropout=0.5,0.3,1.5", "sweep.parallel=2", *tiny(tiny_shards, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("model.dropout=1.5 must be in [0, 1)") == 2  # the sweep went on
    folders = sorted(f for f in os.listdir(runs) if not f.startswith("."))
    assert len(folders) == 6 and len({f.split("_")[0] for f in folders}) == 1  # one group
    png = tmp_path / "sweep.png"
    assert compare(["--storage", runs, "--plot", str(png)]) == 0
    capsys.readouterr()
    assert compare(["--storage", runs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6
    assert {"optim.lr", "model.dropout"} <= set(rows[0]["settings"])
    assert [r["status"] for r in rows] == ["finished"] * 4 + ["failed"] * 2  # best first, failures last
    tops = [r["best"] for r in rows[:4]]
    assert tops == sorted(tops, reverse=True)
    with Image.open(png) as img:
        assert img.format == "PNG"


def test_optuna_sweeper_preset(tiny_shards, tmp_path):
    runs = str(tmp_path / "runs")
    proc = train("+sweep=optuna", "hydra.sweeper.n_trials=2", *tiny(tiny_shards, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Best value" in proc.stdout + proc.stderr
    assert len([f for f in os.listdir(runs) if not f.startswith(".")]) == 2
