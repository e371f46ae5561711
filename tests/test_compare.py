"""compare: a table of runs, best first, showing only the settings that differ."""

from __future__ import annotations

import json

import yaml
from PIL import Image

from orchestrator.compare import main


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
    lines = []
    for epoch, top1 in enumerate(tops):
        speed = {"images_per_s": 100.0 * (1 + epoch), "perf/mfu": 0.125 * (1 + epoch)}
        lines.append({"step": epoch * 10 + 5, "epoch": epoch, "train/loss": 2.0 - top1, **speed})
        lines.append({"step": epoch * 10 + 10, "epoch": epoch, "val/top1": top1, "val/top5": min(1, top1 + 0.3)})
    lines.append({"event": status})
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
