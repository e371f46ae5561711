"""Rank 0's record of a run: metrics.jsonl in the run's storage folder (always) and a W&B run
(online with WANDB_API_KEY, else offline; never blocking training)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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


class Uploads:
    """Rank 0's writes to object storage, done in order on one background thread, so a slow
    or unreachable bucket (retried for ~90 s) never stalls training."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uploads")
        self.pending: list[Future] = []

    def submit(self, work: Callable[[], None]) -> None:
        self.pending = [f for f in self.pending if not f.done() or f.exception()]
        self.pending.append(self.pool.submit(work))

    def drain(self) -> None:
        """Wait for every write; raise the first that failed for good."""
        for future in self.pending:
            future.result()
        self.pending.clear()


class MetricsLog:
    """One JSON object per line. Object stores cannot append, so there the whole file is
    rewritten in the background, coalescing the lines that arrived meanwhile."""

    def __init__(self, url: str, options: dict[str, Any], uploads: Uploads) -> None:
        self.url, self.options, self.uploads = url, options, uploads
        existing = storage.read_text(url, options) or ""
        self.lines = existing.splitlines()
        self.lock = threading.Lock()
        self.dirty = False

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record})
        if storage.is_local(self.url):
            path = self.url.removeprefix("file://")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(line + "\n")
            return
        with self.lock:
            self.lines.append(line)
            queued, self.dirty = self.dirty, True
        if not queued:
            self.uploads.submit(self._flush)

    def _flush(self) -> None:
        with self.lock:
            text = "\n".join(self.lines) + "\n"
            self.dirty = False
        storage.write_text(self.url, text, self.options)


class Tracker:
    def __init__(self, config: dict[str, Any], run_url: str, wandb_dir: str) -> None:
        options = config["storage"]["options"]
        self.uploads = Uploads()
        self.metrics = MetricsLog(storage.join(run_url, "metrics.jsonl"), options, self.uploads)
        self.run = None
        logger = config["logger"]
        mode = wandb_mode(logger["mode"])
        if mode != "disabled":
            os.makedirs(wandb_dir, exist_ok=True)
            try:
                self.run = self._start_wandb(config, mode, wandb_dir)
            except Exception as err:  # no network, a bad key: W&B must never stop training
                print(f"warning: W&B {mode} start failed ({type(err).__name__}); logging offline", flush=True)
                mode = "offline"
                self.run = self._start_wandb(config, mode, wandb_dir)
            # run.dir is <run folder>/files; the run folder is what `wandb sync` takes.
            self.event("wandb", mode=mode, url=self.run.url, dir=os.path.dirname(self.run.dir))

    @staticmethod
    def _start_wandb(config: dict[str, Any], mode: str, wandb_dir: str):
        import wandb

        logger = config["logger"]
        return wandb.init(
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
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
        )

    def log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.metrics.write({"step": step, "epoch": epoch, **metrics})
        if self.run is not None:
            self.run.log({**metrics, "epoch": epoch}, step=step)

    def event(self, name: str, **fields: Any) -> None:
        self.metrics.write({"event": name, **fields})

    def summary(self, **values: float) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def upload_folder(self, local: str, url: str, options: dict[str, Any]) -> None:
        """Upload a local folder in the background, then delete it."""

        def upload() -> None:
            storage.put_dir(local, url, options)
            shutil.rmtree(local, ignore_errors=True)

        self.uploads.submit(upload)

    def finish(self) -> None:
        self.uploads.drain()
        if self.run is not None:
            self.run.finish()
