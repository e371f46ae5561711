"""Rank 0's record of a run: metrics.jsonl in the run's storage folder (always) and a W&B run
(online with WANDB_API_KEY, else offline; never blocking training)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from orchestrator import storage

SECRET_KEYS = ("options", "storage_options")  # fsspec options may hold keys and tokens


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every storage option's value hidden: safe for W&B, logs and files."""
    out = {}
    for key, value in config.items():
        if key in SECRET_KEYS and isinstance(value, dict):
            out[key] = dict.fromkeys(value, "<hidden>")
        elif isinstance(value, dict):
            out[key] = public_config(value)
        else:
            out[key] = value
    return out


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_run_id(storage_url: str, run_name: str) -> str:
    """Stable per run, so a resumed or restarted run appends to the same W&B run."""
    return hashlib.sha256(f"{storage_url}/{run_name}".encode()).hexdigest()[:16]


class MetricsLog:
    """One JSON object per line. Object stores cannot append, so there the file is rewritten
    whole on every write (it holds a line per report: small)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url, self.options = url, options
        existing = storage.read_text(url, options) or ""
        self.lines = existing.splitlines()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record})
        self.lines.append(line)
        if storage.is_local(self.url):
            path = self.url.removeprefix("file://")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(line + "\n")
        else:
            storage.write_text(self.url, "\n".join(self.lines) + "\n", self.options)


class Tracker:
    def __init__(self, config: dict[str, Any], run_url: str, wandb_dir: str) -> None:
        options = config["storage"]["options"]
        self.metrics = MetricsLog(storage.join(run_url, "metrics.jsonl"), options)
        self.run = None
        logger = config["logger"]
        mode = wandb_mode(logger["mode"])
        if mode != "disabled":
            import wandb

            os.makedirs(wandb_dir, exist_ok=True)
            self.run = wandb.init(
                project=logger["project"],
                group=logger["group"],
                job_type="train",
                name=config["run_name"],
                id=wandb_run_id(config["storage"]["url"], config["run_name"]),
                resume="allow",
                mode=mode,
                dir=wandb_dir,
                tags=list(logger["tags"]),
                config=public_config(config),
                settings=wandb.Settings(console="off", silent=True),
            )
            # run.dir is <run folder>/files; the run folder is what `wandb sync` takes.
            self.event("wandb", mode=mode, url=self.run.url, dir=os.path.dirname(self.run.dir))

    def log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.metrics.write({"step": step, "epoch": epoch, **metrics})
        if self.run is not None:
            self.run.log({**metrics, "epoch": epoch}, step=step)

    def event(self, name: str, **fields: Any) -> None:
        self.metrics.write({"event": name, **fields})

    def summary(self, **values: float) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
