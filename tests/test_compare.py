"""compare: a table of runs, best first, showing only the settings that differ."""

from __future__ import annotations

import json

import yaml
from PIL import Image

from orchestrator.runs.compare import main


def make_run(
    root, name: str, lr: float, dropout: float, tops: list[float], group: str = "g1", status: str = "finished"
) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {
        "optim": {"lr": lr, "momentum": 0.9},
        "model": {"dropout": dropout, "width": 0.25},
        "logger": {"group": group},
        "run_name": name,
        "seed": 0,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"time": 1000.0, "event": "worker", "rank": 0, "devices": ["cpu"]}]
    for epoch, top1 in enumerate(tops):  # an epoch every 60 s
        speed = {"images_per_s": 100.0 * (1 + epoch), "perf/mfu": 0.125 * (1 + epoch)}
        lines.append(
            {"time": 1030.0 + 60 * epoch, "step": epoch * 10 + 5, "epoch": epoch, "train/loss": 2.0 - top1, **speed}
        )
        lines.append({"time": 1060.0 + 60 * epoch, "step": epoch * 10 + 10, "epoch": epoch, "val/top1": top1,
                      "val/top5": min(1, top1 + 0.3)})  # fmt: skip
    lines.append({"event": status, **({"epoch": len(tops)} if status == "stopped_early" else {})})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_runs_sorted_best_first_with_only_differing_keys(tmp_path, capsys):
    make_run(tmp_path, "a", 0.01, 0.5, [0.2, 0.4])
    make_run(tmp_path, "b", 0.02, 0.5, [0.3, 0.7])
    make_run(tmp_path, "c", 0.02, 0.3, [0.1, 0.5])
    make_run(tmp_path, "d", 0.01, 0.3, [], status="failed")
    assert main(["--storage", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["b", "c", "a", "d"]
    assert set(rows[0]["settings"]) == {"optim.lr", "model.dropout"}  # not momentum, width or seed
    assert (rows[0]["best"], rows[0]["status"], rows[-1]["status"]) == (0.7, "finished", "failed")
    assert (rows[0]["images_per_s"], rows[0]["mfu"], rows[0]["epochs"]) == (200.0, 0.25, 2)  # the last epoch's
    assert main(["--storage", str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "optim.lr" in out and "70.0%" in out and "MFU" in out and "25.0%" in out
    with Image.open(tmp_path / "p.png") as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_reach_and_what_early_stopping_saved(tmp_path, capsys):
    make_run(tmp_path, "fast", 0.02, 0.5, [0.3, 0.6, 0.85, 0.9])
    make_run(tmp_path, "slow", 0.01, 0.5, [0.1, 0.2], status="stopped_early")
    (tmp_path / "fast" / "config.yaml").write_text(yaml.safe_dump({"epochs": 4, "cluster": {"nodes": 2}}))
    (tmp_path / "slow" / "config.yaml").write_text(yaml.safe_dump({"epochs": 4, "cluster": {"nodes": 2}}))
    assert main(["--storage", str(tmp_path), "--json", "--reach", "0.5,0.8,0.95"]) == 0
    fast, slow = json.loads(capsys.readouterr().out)
    assert fast["reached"]["0.5"] == {"epoch": 2, "seconds": 120.0}  # from the first record to that val line
    assert fast["reached"]["0.8"] == {"epoch": 3, "seconds": 180.0}
    assert fast["reached"]["0.95"] == {"epoch": None, "seconds": None}
    assert fast["cost"] == 240.0 * 2 / 3600 and fast["cost_unit"] == "worker-hours"  # 2 workers, 240 s
    assert slow["status"] == "stopped early at epoch 2" and slow["full_cost"] == 2 * slow["cost"]
    assert main(["--storage", str(tmp_path), "--reach", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "reached 50%" in out and "stopping runs early saved 25%" in out  # 600 of 800 worker-seconds
    assert main(["--storage", str(tmp_path), "--reach", "half"]) == 2


def test_group_filter_and_empty_storage(tmp_path, capsys):
    make_run(tmp_path, "a", 0.01, 0.5, [0.2], group="g1")
    make_run(tmp_path, "b", 0.02, 0.5, [0.3], group="g2")
    assert main(["--storage", str(tmp_path), "--group", "g2", "--json"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["b"]
    assert main(["--storage", str(tmp_path / "nothing")]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_wandb_source_needs_a_key(tmp_path, monkeypatch):
    import pytest

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="WANDB_API_KEY"):
        main(["--source", "wandb"])
