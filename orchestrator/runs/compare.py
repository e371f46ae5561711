"""python -m orchestrator.compare [--group NAME] [--storage URL] [--source local|wandb]
[--metric val/top1] [--reach 0.5,0.8] [--plot FILE.png] [--json]: which run won, the settings
that differ, when each run reached given accuracies and at what cost (worker-hours; GPU-hours
where GPUs were used), and for a sweep what stopping runs early saved against the full grid.

`local` (default) reads every run's config.yaml and metrics.jsonl under the storage URL, so it
works offline and from a bucket; `wandb` asks the W&B API (needs WANDB_API_KEY)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator import storage
from orchestrator.config import REPO_ROOT, absolute
from orchestrator.runs.record import RunRecord

# Keys that differ between any two runs without being a setting worth comparing.
NOT_SETTINGS = ("run_name", "logger.dir", "logger.group", "resume", "data.url", "storage.url")


@dataclass
class Row:
    """One run as the table and the plot need it, from whichever source."""

    name: str
    settings: dict[str, Any]
    status: str
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, seconds since start, metric)
    best: float | None = None
    best_top5: float | None = None
    train_loss: float | None = None
    images_per_s: float | None = None
    mfu: float | None = None
    epochs: int = 0
    planned_epochs: int = 0
    seconds: float | None = None  # time running, from launch to its last record (RunRecord.seconds)
    first_step_s: float = 0.0  # when its first step was taken, in the same time
    workers: int = 1
    gpus: int = 0  # all workers' GPUs together (0: CPU)

    @property
    def cost_unit(self) -> str:
        return "GPU-hours" if self.gpus else "worker-hours"

    def cost(self, seconds: float | None = None) -> float | None:
        """Worker-hours (GPU-hours where GPUs were used) for `seconds` of this run (default: all)."""
        seconds = self.seconds if seconds is None else seconds
        return None if seconds is None else seconds * (self.gpus or self.workers) / 3600

    def full_cost(self) -> float | None:
        """What the run costs when it trains every planned epoch: a run stopped early, projected
        at its own time per epoch, counted from its first step (its launch is paid once)."""
        if self.seconds is None or not self.epochs:
            return self.cost()
        per_epoch = (self.curve[-1][1] - self.first_step_s) / self.epochs if self.curve else self.seconds / self.epochs
        return self.cost(self.seconds + (max(self.planned_epochs, self.epochs) - self.epochs) * per_epoch)

    def reached(self, threshold: float) -> tuple[int, float] | None:
        """(epoch, seconds) when the metric first reached `threshold`."""
        return next(((e, s) for e, s, m in self.curve if m >= threshold), None)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differing_keys(rows: list[Row]) -> list[str]:
    """Settings that differ between runs; `effective.*` (what settings amount to, such as the
    scaled lr) follows from them and would only repeat a column."""
    keys = sorted(
        k for k in {k for r in rows for k in r.settings} - set(NOT_SETTINGS) if not k.startswith("effective.")
    )
    return [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True) for r in rows}) > 1]


def local_rows(root: str, options: dict[str, Any], group: str | None, metric: str) -> list[Row]:
    rows = []
    for name in storage.list_dirs(root, options):
        record = RunRecord.read(storage.join(root, name), options)
        if not record.lines and not record.config:
            continue  # not a run folder
        if group and (record.config.get("logger") or {}).get("group") != group:
            continue
        best = record.best(metric) or {}
        active = record.active_seconds()  # a run paused by a sweep's rung is not running meanwhile
        devices = [d for w in record.events("worker") for d in w.get("devices", [])]
        config = flatten(record.config)
        rows.append(
            Row(
                name=name,
                settings=flatten(record.config),
                status=record.status,
                curve=[
                    (line["epoch"] + 1, active.get(line.get("time"), 0.0), line[metric])
                    for line in record.metric_lines(metric)
                ],
                best=best.get(metric),
                best_top5=best.get("val/top5"),
                train_loss=record.last("train/loss"),
                images_per_s=record.images_per_s(),
                mfu=record.steady("perf/mfu"),
                epochs=record.epochs_done(),
                planned_epochs=int(config.get("epochs") or 0),
                seconds=record.seconds(),
                first_step_s=next((active[e["time"]] for e in record.events("first_step") if e["time"] in active), 0.0),
                workers=int(config.get("cluster.nodes") or 1),
                gpus=sum(1 for d in devices if d.startswith("cuda")),
            )
        )
    return rows


def wandb_rows(project: str, group: str | None, metric: str) -> list[Row]:
    if not os.environ.get("WANDB_API_KEY"):
        raise SystemExit("error: --source wandb needs WANDB_API_KEY; use --source local to read the run folders")
    import wandb

    api = wandb.Api()
    runs = api.runs(project, filters={"group": group} if group else None)
    rows = []
    for run in runs:
        history = [h for h in run.scan_history(keys=["epoch", "_runtime", metric]) if h.get(metric) is not None]
        rows.append(
            Row(
                name=run.name,
                settings=flatten(dict(run.config)),
                status=run.state,
                curve=[(int(h["epoch"]) + 1, h.get("_runtime", 0.0), h[metric]) for h in history],
                seconds=run.summary.get("_runtime"),
                planned_epochs=int(run.config.get("epochs") or 0),
                workers=int((run.config.get("cluster") or {}).get("nodes") or 1),
                best=max((h[metric] for h in history), default=None),
                train_loss=run.summary.get("train/loss"),
                images_per_s=run.summary.get("images_per_s"),
                mfu=run.summary.get("perf/mfu"),
                epochs=len(history),
            )
        )
    return rows


def _fmt(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "rate":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _reach(row: Row, threshold: float) -> str:
    hit = row.reached(threshold)
    if hit is None:
        return "-"
    epoch, seconds = hit
    return f"epoch {epoch}, {seconds / 60:.1f} min, {row.cost(seconds):.3g} h"


def table(rows: list[Row], metric: str, reach: list[float]) -> Table:
    keys = differing_keys(rows)
    t = Table(title=f"{len(rows)} runs, best {metric} first")
    t.add_column("run", overflow="fold")
    for key in keys:
        t.add_column(key, justify="right")
    unit = rows[0].cost_unit
    columns = [f"best {metric}", "top-5", "train loss", "images/s", "MFU", "epochs", unit]
    for column in [*columns, *(f"reached {x:.0%}" for x in reach), "status"]:
        t.add_column(column, justify="right")
    for r in rows:
        t.add_row(
            r.name,
            *(_fmt(r.settings.get(k)) for k in keys),
            _fmt(r.best, "pct"),
            _fmt(r.best_top5, "pct"),
            _fmt(r.train_loss),
            _fmt(r.images_per_s, "rate"),
            _fmt(r.mfu, "pct"),
            str(r.epochs),
            _fmt(r.cost()),
            *(_reach(r, x) for x in reach),
            r.status,
        )
    return t


def spending(rows: list[Row]) -> str | None:
    """For a sweep with runs stopped early: what it cost against the full grid."""
    if not any(r.status.startswith("stopped early") for r in rows):
        return None
    spent = sum(r.cost() or 0.0 for r in rows)
    full = sum(r.full_cost() or 0.0 for r in rows)
    return (
        f"{rows[0].cost_unit}: {spent:.3g} spent; the full grid would have taken {full:.3g} "
        f"(stopping runs early saved {1 - spent / full:.0%})"
    )


def plot(rows: list[Row], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = differing_keys(rows)
    fig, (ax_epochs, ax_time) = plt.subplots(1, 2, figsize=(13, 5))
    for r in rows:
        if r.curve:
            label = ", ".join(f"{k}={_fmt(r.settings.get(k))}" for k in keys) or r.name
            epochs, seconds, values = zip(*r.curve, strict=True)
            ax_epochs.plot(epochs, values, marker="o", label=label)
            ax_time.plot([s / 60 for s in seconds], values, marker="o", label=label)
    ax_epochs.set_xlabel("epoch")
    ax_time.set_xlabel("wall time (min)")
    for ax in (ax_epochs, ax_time):
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if any(r.curve for r in rows):
        ax_epochs.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.compare", description=__doc__)
    p.add_argument("--group", help="only runs of this W&B group (a sweep's name)")
    p.add_argument("--storage", default=os.path.join(REPO_ROOT, "runs"), help="root of the runs (storage.url)")
    p.add_argument("--storage-options", default="{}", help="fsspec options as JSON, e.g. an endpoint")
    p.add_argument("--source", choices=("local", "wandb"), default="local")
    p.add_argument("--project", default="alexnet", help="W&B project (entity/project) for --source wandb")
    p.add_argument("--metric", default="val/top1", help="the metric to rank by (higher is better)")
    p.add_argument("--reach", default="", help="accuracies, e.g. 0.5,0.8: when each run first reached them")
    p.add_argument("--plot", help="write a PNG of the metric against epochs and wall time, one line per run")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (for scripts) instead of a table")
    return p


def as_json(rows: list[Row], reach: list[float]) -> str:
    """The table's rows as data, best first: the differing settings and the figures."""
    keys = differing_keys(rows)
    fields = ("best", "best_top5", "train_loss", "images_per_s", "mfu", "epochs", "status", "seconds")
    out = []
    for r in rows:
        reached = {str(x): dict(zip(("epoch", "seconds"), r.reached(x) or (None, None), strict=True)) for x in reach}
        out.append({
            "run": r.name, "settings": {k: r.settings.get(k) for k in keys}, **{f: getattr(r, f) for f in fields},
            "cost": r.cost(), "full_cost": r.full_cost(), "cost_unit": r.cost_unit, "reached": reached,
        })  # fmt: skip
    return json.dumps(out, indent=1)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.source == "local":
        try:
            options = json.loads(args.storage_options)
        except json.JSONDecodeError:
            print("error: --storage-options is not valid JSON", file=sys.stderr)
            return 2
        rows = local_rows(absolute(args.storage), options, args.group, args.metric)
    else:
        rows = wandb_rows(args.project, args.group, args.metric)
    if not rows:
        where = f"group {args.group} in " if args.group else ""
        print(f"error: no runs found in {where}{args.storage}; pass --storage or --group", file=sys.stderr)
        return 2
    rows.sort(key=lambda r: -math.inf if r.best is None else r.best, reverse=True)
    try:
        reach = [float(x) for x in args.reach.split(",") if x.strip()]
    except ValueError:
        print(f"error: --reach {args.reach} is not a list of numbers; give accuracies such as 0.5,0.8", file=sys.stderr)
        return 2
    if args.json:
        print(as_json(rows, reach))
    else:
        Console(width=200).print(table(rows, args.metric, reach))
        saved = spending(rows)
        if saved:
            print(saved)
    if args.plot:
        plot(rows, args.metric, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
