"""Hydra multirun sweeps end to end: one run per job, grouped, failures recorded, compared."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from PIL import Image
from wandb_records import artifacts, exit_code, offline_run, summary, tags

from orchestrator.runs.compare import main as compare
from orchestrator.worker import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.train", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
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
    proc = train("-m", "optim.lr=0.02,0.01", "model.dropout=0.5,1.5", "sweep.parallel=2", *tiny(tiny_shards, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("model.dropout=1.5 must be in [0, 1)") == 2  # the sweep went on
    folders = sorted(f for f in os.listdir(runs) if not f.startswith("."))
    assert len(folders) == 4 and len({f.split("_")[0] for f in folders}) == 1  # one group
    png = tmp_path / "sweep.png"
    assert compare(["--storage", runs, "--plot", str(png)]) == 0
    capsys.readouterr()
    assert compare(["--storage", runs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4
    assert {"optim.lr", "model.dropout"} <= set(rows[0]["settings"])
    assert [r["status"] for r in rows] == ["finished"] * 2 + ["failed"] * 2  # best first, failures last
    tops = [r["best"] for r in rows[:2]]
    assert tops == sorted(tops, reverse=True)
    with Image.open(png) as img:
        assert img.format == "PNG"


def test_optuna_sweeper_preset(tiny_shards, tmp_path):
    runs = str(tmp_path / "runs")
    proc = train("+sweep=optuna", "hydra.sweeper.n_trials=1", *tiny(tiny_shards, runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = re.search(r"Best value: ([0-9.]+)", proc.stdout + proc.stderr)  # the objective reached Optuna
    assert best and 0 < float(best.group(1)) <= 1
    assert len([f for f in os.listdir(runs) if not f.startswith(".")]) == 1


def test_asha_stops_runs_early_and_compare_says_what_that_saved(tiny_shards, tmp_path, capsys):
    """lr=1e-7 learns nothing: at the first rung it is behind every run that can, and ASHA stops it
    (some epochs later: Tune acts on a result a second or two after it, and these epochs take 0.25 s)."""
    runs = str(tmp_path / "runs")
    args = [a for a in tiny(tiny_shards, runs) if not a.startswith("epochs=")]
    proc = train(
        "-m", "optim.lr=0.05,1e-7", "model.dropout=0.0", "epochs=20", "optim.scale_lr=none", "sweep.scheduler=asha",
        "sweep.grace_period=1", "sweep.reduction_factor=2", *args,
        # Ray Train's controller takes in reports every 2 s; these epochs take 0.25 s, so by default
        # the scheduler hears of epoch 2 only ~40 s later, after the run has ended (seen once)
        env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    assert compare(["--storage", runs, "--json", "--reach", "0.01"]) == 0
    rows = {r["settings"]["optim.lr"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[0.05]["status"] == "finished" and rows[0.05]["epochs"] == 20
    stopped = rows[1e-07]
    assert stopped["status"] == f"stopped early at epoch {stopped['epochs']}" and stopped["epochs"] < 20
    assert stopped["full_cost"] > stopped["cost"]  # projected to the 20 epochs it was planned for
    assert rows[0.05]["reached"]["0.01"]["epoch"] == 1
    assert compare(["--storage", runs]) == 0
    assert "stopping runs early saved" in capsys.readouterr().out
    # the scheduler's verdict reached the run as a stop request: it ended itself, cleanly
    folder = os.path.join(runs, stopped["run"])
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        ends = [e for e in map(json.loads, f) if e.get("event") == "stopped_early"]
    assert len(ends) == 1 and "step" in ends[0]  # written by the run, not by the driver after it
    records = offline_run(folder)
    assert "stopped early" in tags(records) and exit_code(records) == 0
    assert artifacts(records)[0]["metadata"]["val/top1"] == stopped["best"]


def test_synchronous_halving_judges_every_run_at_each_rung_and_resumes_the_best(tiny_shards, tmp_path, capsys):
    """sweep.scheduler=sha, 3 runs, rungs at epochs 1 and 2 (reduction factor 3): all three pause
    after epoch 1; the best is resumed exactly there and trains to the end, the other two are
    stopped early at epoch 1, in compare and in W&B, and the lr=1e-7 run is one of them."""
    runs = str(tmp_path / "runs")
    args = [a for a in tiny(tiny_shards, runs) if not a.startswith("epochs=")]
    proc = train(
        "-m", "optim.lr=0.05,0.02,1e-7", "model.dropout=0.0", "epochs=2", "optim.scale_lr=none",
        "sweep.scheduler=sha", "sweep.grace_period=1", "sweep.reduction_factor=3", "sweep.parallel=3",
        "cluster.nodes=1", *args,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    assert compare(["--storage", runs, "--json"]) == 0
    rows = {r["settings"]["optim.lr"]: r for r in json.loads(capsys.readouterr().out)}
    finished = [r for r in rows.values() if r["status"] == "finished"]
    assert len(finished) == 1 and finished[0]["epochs"] == 2
    assert rows[1e-07]["status"] == "stopped early at epoch 1" and rows[1e-07]["epochs"] == 1
    assert sorted(r["status"] for r in rows.values()).count("stopped early at epoch 1") == 2
    with open(os.path.join(runs, finished[0]["run"], "metrics.jsonl")) as f:
        events = [e["event"] for e in map(json.loads, f) if "event" in e]
    assert events.count("launched") == 2 and events.index("paused") < events.index("resumed")
    assert tags(offline_run(os.path.join(runs, finished[0]["run"]), launches=2)) == []
    cut = offline_run(os.path.join(runs, rows[1e-07]["run"]), launches=2)  # the driver's word to W&B
    assert tags(cut) == ["stopped early"] and summary(cut)["stopped_at_epoch"] == 1


def tail(log: str) -> str:
    with open(log) as f:
        return f.read()[-3000:]


def test_ctrl_c_on_a_sweep_stops_every_run_and_leaves_each_readable(tiny_shards, tmp_path, capsys):
    """Ctrl-C reaches the whole terminal group: the running trial checkpoints where it is and
    ends `stopped`, the queued ones never start, the driver exits 130, and compare reads all."""
    runs = str(tmp_path / "runs")
    args = [a for a in tiny(tiny_shards, runs) if not a.startswith(("epochs=", "log_every_steps="))]
    log = str(tmp_path / "sweep.log")
    with open(log, "w") as out:
        driver = subprocess.Popen(
            # the default scheduler (sha) with its first rung far off: no run pauses before the signal
            [sys.executable, "-m", "orchestrator.train", "-m", "optim.lr=0.05,0.02,0.01", "epochs=30",
             "log_every_steps=1", "sweep.parallel=1", "sweep.grace_period=20", *args],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def steps() -> int:
        done = 0
        for name in os.listdir(runs) if os.path.isdir(runs) else []:
            with contextlib.suppress(FileNotFoundError), open(os.path.join(runs, name, "metrics.jsonl")) as f:
                done = max([done, *(json.loads(line).get("step", 0) for line in f if "train/loss" in line)])
        return done

    deadline = time.monotonic() + 300
    while steps() < 3:
        assert driver.poll() is None and time.monotonic() < deadline, tail(log)
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGINT)
    assert driver.wait(timeout=300) == 130, tail(log)

    capsys.readouterr()
    assert compare(["--storage", runs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"stopped"}, rows

    def checkpoints(name: str) -> list[str]:
        folder = os.path.join(runs, name)
        return sorted(n for n in os.listdir(folder) if n.startswith("checkpoint_") and os.path.isdir(f"{folder}/{n}"))

    (trained,) = [r["run"] for r in rows if checkpoints(r["run"])]  # the queued two never started
    folder = os.path.join(runs, trained)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        end = [json.loads(line) for line in f][-1]
    assert end["event"] == "stopped" and end["step"] >= 3
    newest = os.path.join(folder, checkpoints(trained)[-1])
    assert checkpoint.load(newest)["position"]["step"] == end["step"]  # a checkpoint where it stopped
    records = offline_run(folder)
    assert "stopped" in tags(records) and exit_code(records) == 0


@pytest.mark.parametrize("rejudge", [True, False])
def test_asha_rejudges_a_run_that_passed_a_rung_before_a_better_one_reached_it(tmp_path, rejudge):
    """Run a reaches epoch 1 first (nothing to compare: it passes), b then beats it there. With
    sweep.rejudge, a's next result stops it (a stop request in its folder, as the scheduler
    asks); Tune's ASHA alone lets it go on to be judged only at epoch 2 against whoever is there."""
    from types import SimpleNamespace

    from orchestrator.config import SweepConfig
    from orchestrator.runs.folder import EARLY_STOP, RunFolder
    from orchestrator.sweeps import schedulers

    runs = {job: SimpleNamespace(storage=SimpleNamespace(url=str(tmp_path), options={}), run_name=f"r{job}")
            for job in (0, 1)}  # fmt: skip
    sweep = SweepConfig(scheduler="asha", grace_period=1, reduction_factor=2, rejudge=rejudge)
    scheduler = schedulers.scheduler(sweep, 8, runs)
    a, b = (SimpleNamespace(trial_id=name, config={"job": job}) for name, job in (("a", 0), ("b", 1)))
    for trial in (a, b):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, a, {"epoch": 1, "val/top1": 0.1}) == scheduler.CONTINUE
    assert scheduler.on_trial_result(None, b, {"epoch": 1, "val/top1": 0.9}) == scheduler.CONTINUE
    scheduler.on_trial_result(None, a, {"epoch": 2, "val/top1": 0.1})  # b is still in epoch 2
    a_folder = RunFolder(str(tmp_path), "r0")
    assert a_folder.stop_requested() == rejudge
    assert not RunFolder(str(tmp_path), "r1").stop_requested()
    if rejudge:
        assert a_folder.stop_reason() == EARLY_STOP


def test_halving_rungs_and_who_goes_on():
    import math

    from orchestrator.sweeps.schedulers import rungs, survivors

    assert rungs(12, 1, 2) == [1, 2, 4, 8, 12]
    assert rungs(3, 1, 3) == [1, 3]
    assert rungs(1, 1, 2) == [1]
    assert rungs(10, 3, 2) == [3, 6, 10]
    # the best half (rounded up), ties to the earlier job, a failed run (NaN) never
    assert survivors({0: 0.5, 1: 0.9, 2: math.nan, 3: 0.9, 4: 0.1}, 2) == [1, 3, 0]
    assert survivors({0: 0.2, 1: 0.7}, 3) == [1]


def test_a_queued_run_that_never_starts_after_ctrl_c_is_stopped_where_it_paused(tiny_shards, tmp_path, monkeypatch):
    """A sha survivor still queued for the next rung when the sweep is stopped never starts: its
    record says stopped at the epoch it paused after, not at epoch 0."""
    from conftest import compose, tiny_run_overrides

    from orchestrator.launch.prepare import prepare
    from orchestrator.runs.folder import RunFolder
    from orchestrator.runs.record import RunRecord
    from orchestrator.sweeps import trials

    runs = str(tmp_path / "runs")
    config = prepare(compose(*tiny_run_overrides(tiny_shards, runs, run_name="queued", **{"logger.mode": "disabled"})))
    folder = RunFolder(config.storage.url, config.run_name)
    for epoch in (1, 2):
        folder.write({"step": epoch, "epoch": epoch, "val/top1": 0.5})
    folder.event("paused", epoch=2)
    folder.request_stop("SIGINT")
    trials.trial({"job": 0}, {0: config})
    record = RunRecord.read(folder.url)
    assert record.status == "stopped" and record.events("stopped")[-1]["epoch"] == 2
