"""A run as it lies in storage, and the one place that spells its layout:

    <storage.url>/<run_name>/config.yaml      the resolved config, storage options hidden
                            metrics.jsonl    one JSON object per line: metrics and events
                            checkpoint_*/    the kept checkpoints (state.pt)
                            best/            a copy of the checkpoint with the best val top-1
                            stop             present while a stop is requested (orchestrator/launch/stops.py)

`RunFolder` writes a run (the driver's config.yaml and end event, rank 0's metrics); `RunRecord`
reads one back (the end-of-run summary, `compare`)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from orchestrator import storage

if TYPE_CHECKING:
    from orchestrator.config import TrainConfig

CONFIG = "config.yaml"

METRICS = "metrics.jsonl"

BEST = "best"

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "state.pt"  # in each checkpoint folder (orchestrator/worker/checkpoint.py)
CHECKSUM_FILE = "state.sha256"  # written with state.pt; a copy that does not match is damaged

STOP = "stop"

EARLY_STOP = "stopped_early"  # the reason a sweep's scheduler gives when it drops a run (sweeps/schedulers.py)

PAUSED = "paused"  # ended at `until_epoch`, to be resumed (a sweep's synchronous halving, sweeps/schedulers.py)

END_EVENTS = ("finished", "failed", "stopped", PAUSED, EARLY_STOP)

# Written by the driver when it starts the run's workers; a relaunch (resume) starts again
LAUNCHED = "launched"


class Uploads:
    """Writes to object storage, done in order on one background thread, so a slow or
    unreachable bucket (retried for ~90 s) never stalls training."""

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


class RunFolder:
    """Where one run's files go, and the writer of its config and metrics.

    One writer per run and process: `RunFolder.of(config)` hands every part of a process (the
    driver's launch and summary, rank 0's tracker, a sweep's judge) the same instance, because on
    object storage an instance keeps metrics.jsonl's lines to rewrite the file whole, and two
    instances would each rewrite it from their own copy (a local run on S3 once ended with only
    `launched` and `finished`: every metric line lost). Between processes the record changes
    hands (the driver before launch and after the workers end, rank 0 in between): `drain()`
    also forgets the copy, so the next write starts from what the other process wrote."""

    _open: ClassVar[dict[tuple[str, str], RunFolder]] = {}

    def __init__(self, storage_url: str, name: str, options: dict[str, Any] | None = None) -> None:
        self.name, self.options = name, options or {}
        self.url = storage.join(storage_url, name)
        self.uploads = Uploads()
        self._lines: list[str] | None = None
        self._lock = threading.Lock()
        self._dirty = False

    @classmethod
    def of(cls, config: TrainConfig) -> RunFolder:
        """The run's folder in this process: one instance per run (see the class)."""
        return cls.at(config.storage.url, config.run_name, config.storage.options)

    @classmethod
    def at(cls, storage_url: str, name: str, options: dict[str, Any] | None = None) -> RunFolder:
        key = (storage.join(storage_url, name), json.dumps(options or {}, sort_keys=True, default=str))
        folder = cls._open.get(key)
        if folder is None:
            folder = cls._open[key] = cls(storage_url, name, options)
        return folder

    def path(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    @property
    def metrics_url(self) -> str:
        return self.path(METRICS)

    @property
    def best_url(self) -> str:
        return self.path(BEST)

    @property
    def local(self) -> str | None:
        """The folder on this machine, when the run is stored on local disk."""
        return self.url.removeprefix("file://") if storage.is_local(self.url) else None

    def wandb_dir(self, elsewhere: str) -> str:
        """Beside the metrics when the run is local; else `elsewhere`, to `wandb sync` from."""
        return self.local or elsewhere

    def checkpoints(self) -> list[str]:
        """The names of the run's checkpoint folders, oldest first (their names sort by time)."""
        return [d for d in storage.list_dirs(self.url, self.options) if d.startswith(CHECKPOINT_PREFIX)]

    def exists(self) -> bool:
        return storage.exists(self.metrics_url, self.options)

    def request_stop(self, reason: str) -> None:
        """Ask the run's workers to checkpoint and end (rank 0 watches for this file)."""
        storage.write_text(self.path(STOP), json.dumps({"time": round(time.time(), 3), "reason": reason}), self.options)

    def stop_requested(self) -> bool:
        return storage.exists(self.path(STOP), self.options)

    def stop_reason(self) -> str | None:
        """Why a stop was requested ("SIGINT", EARLY_STOP, ...); None when none was."""
        text = storage.read_text(self.path(STOP), self.options)
        return json.loads(text).get("reason") if text else None

    def clear_stop(self) -> None:
        """At launch: a resumed run must not obey the request that stopped it last time."""
        if self.stop_requested():
            storage.remove_file(self.path(STOP), self.options)

    def write_config(self, public: dict[str, Any]) -> None:
        storage.write_text(self.path(CONFIG), yaml.safe_dump(public, sort_keys=False), self.options)

    def write(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl. Object stores cannot append, so there the whole
        file is rewritten in the background, coalescing the lines that arrived meanwhile."""
        line = json.dumps({"time": round(time.time(), 3), **record})
        if self.local is not None:
            os.makedirs(self.local, exist_ok=True)
            with open(self.path(METRICS).removeprefix("file://"), "a") as f:
                f.write(line + "\n")
            return
        with self._lock:
            if self._lines is None:
                self._lines = (storage.read_text(self.metrics_url, self.options) or "").splitlines()
            self._lines.append(line)
            queued, self._dirty = self._dirty, True
        if not queued:
            self.uploads.submit(self._flush)

    def event(self, name: str, **fields: Any) -> None:
        self.write({"event": name, **fields})

    def _flush(self) -> None:
        with self._lock:
            text = "\n".join(self._lines or []) + "\n"
            self._dirty = False
        storage.write_text(self.metrics_url, text, self.options)

    def drain(self) -> None:
        """Wait for every write; then forget the copy of metrics.jsonl (see the class)."""
        self.uploads.drain()
        with self._lock:
            if not self._dirty:
                self._lines = None
