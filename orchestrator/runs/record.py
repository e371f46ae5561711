"""A run's record read back from storage: its config and metrics.jsonl, its status, best epoch,
speed and time (the end-of-run summary, `compare`, the sweeps' judges)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator import storage
from orchestrator.runs.folder import CONFIG, EARLY_STOP, END_EVENTS, LAUNCHED, METRICS, PAUSED


@dataclass
class RunRecord:
    name: str
    url: str
    config: dict[str, Any] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, url: str, options: dict[str, Any] | None = None) -> RunRecord:
        config = yaml.safe_load(storage.read_text(storage.join(url, CONFIG), options) or "{}") or {}
        text = storage.read_text(storage.join(url, METRICS), options) or ""
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return cls(url.rstrip("/").rsplit("/", 1)[-1], url, config, lines)

    def metric_lines(self, key: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if key in line]

    def best(self, key: str = "val/top1") -> dict[str, Any] | None:
        lines = self.metric_lines(key)
        return max(lines, key=lambda line: line[key]) if lines else None

    def last(self, key: str) -> float | None:
        lines = self.metric_lines(key)
        return lines[-1][key] if lines else None

    def steady(self, key: str) -> float | None:
        """Median of `key` over the last epoch's reports: steady state, not the warm-up."""
        lines = self.metric_lines(key)
        if not lines:
            return None
        last_epoch = lines[-1]["epoch"]
        return statistics.median(line[key] for line in lines if line["epoch"] == last_epoch)

    def images_per_s(self) -> float | None:
        return self.steady("images_per_s")

    def epochs_done(self) -> int:
        return len({line["epoch"] for line in self.metric_lines("val/top1")})

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def _last_end(self) -> dict[str, Any] | None:
        """The event that ended the run last; None while it runs (a resumed run runs again)."""
        ends = [line for line in self.lines if line.get("event") in (*END_EVENTS, "resumed", LAUNCHED)]
        return ends[-1] if ends and ends[-1]["event"] in END_EVENTS else None

    @property
    def end_event(self) -> str | None:
        """One of END_EVENTS, or None while the run runs."""
        end = self._last_end()
        return end["event"] if end else None

    @property
    def status(self) -> str:
        """finished | failed | stopped (resumable) | stopped early at epoch N (a sweep's scheduler) |
        running (also once a stopped run resumes) | empty."""
        end = self._last_end()
        if end is None:
            return "running" if self.lines else "empty"
        if end["event"] == EARLY_STOP:
            return f"stopped early at epoch {end['epoch']}"
        if end["event"] == PAUSED:
            return f"paused after epoch {end['epoch']}"
        return end["event"]

    def active_seconds(self) -> dict[float, float]:
        """Each record's time as seconds the run has been running: from its launch (else its
        first record), leaving out the time between one launch's end and the next launch (a run
        paused by a sweep's rung, or stopped and resumed a day later). The `stopped_early` event a
        sweep writes after the fact is no part of the run's time."""
        active: dict[float, float] = {}
        spent, start, last = 0.0, None, None
        for line in self.lines:
            t = line.get("time")
            if t is None or (line.get("event") == EARLY_STOP and "step" not in line):
                continue
            if start is None or line.get("event") == LAUNCHED:
                if start is not None:
                    spent += last - start
                start = t
            last = t
            active[t] = spent + t - start
        return active

    def seconds(self) -> float | None:
        """How long the run has run, all its launches together (`active_seconds`)."""
        active = self.active_seconds()
        return max(active.values()) if active else None
