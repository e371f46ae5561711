"""python -m orchestrator.tools.early_stopping [--epochs 12] [--out early-stopping.json]: what a
sweep's scheduler saves, measured. The same lr x dropout grid (2 x 3, the demo shards, the mini
net) run side by side: to the end (`sweep.scheduler=none`), with ASHA and with synchronous
successive halving (`sha`; `--schedulers` may add `hyperband`); for each, the best val top-1 and
the worker-seconds all its runs took, from each launch of a run to its last record."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from orchestrator.config import REPO_ROOT
from orchestrator.runs.compare import local_rows
from orchestrator.tools import publish

LRS = "0.04,0.01,0.0025"
DROPOUTS = "0.5,0.3"


def sweep(scheduler: str, root: str, args: argparse.Namespace) -> dict:
    """One sweep of the grid with `scheduler`, in its own folder under `root`."""
    runs = os.path.join(root, scheduler)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable, "-m", "orchestrator.train", "-m", f"optim.lr={args.lrs}",
            f"model.dropout={args.dropouts}", f"epochs={args.epochs}", f"data.url={args.shards}",
            f"storage.url={runs}", f"hydra.sweep.dir={runs}/.sweep", f"sweep.scheduler={scheduler}",
            f"sweep.parallel={args.parallel}", f"sweep.reduction_factor={args.reduction_factor}",
            f"sweep.grace_period={args.grace_period}", "logger.mode=disabled", "log_every_steps=100",
            "data.workers=0", *args.overrides,
        ],
        cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = local_rows(runs, {}, None, "val/top1")
    return {
        "best_val_top1": max(r.best or 0.0 for r in rows),
        "worker_seconds": sum(r.seconds * r.workers for r in rows if r.seconds),
        "epochs_run": sum(r.epochs for r in rows),
        "epochs_planned": args.epochs * len(rows),
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.tools.early_stopping", description=__doc__)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--shards", default=os.path.join(REPO_ROOT, "data", "shards", "demo"))
    p.add_argument("--schedulers", default="none,asha,sha")
    p.add_argument("--grace-period", type=int, default=1, help="sweep.grace_period")
    p.add_argument("--reduction-factor", type=int, default=2, help="sweep.reduction_factor")
    p.add_argument("--lrs", default=LRS, help="optim.lr values")
    p.add_argument("--dropouts", default=DROPOUTS, help="model.dropout values")
    p.add_argument("overrides", nargs="*", help="more overrides for every sweep, e.g. sweep.rejudge=false")
    p.add_argument("--out", default="early-stopping.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="early-stopping-") as root:
        results = {s: sweep(s, root, args) for s in args.schedulers.split(",")}
    full = results.get("none")
    if full:
        for r in results.values():
            r["top1_vs_full_points"] = 100 * (r["best_val_top1"] - full["best_val_top1"])
            r["worker_seconds_vs_full"] = r["worker_seconds"] / full["worker_seconds"]
    publish(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
