"""A run as it lies in storage: <storage.url>/<run_name>/{config.yaml, metrics.jsonl, best/,
checkpoint_*}. The end-of-run summary and `compare` both read runs through this."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator import storage


@dataclass
class RunRecord:
    name: str
    url: str
    config: dict[str, Any] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, url: str, options: dict[str, Any] | None = None) -> RunRecord:
        config = yaml.safe_load(storage.read_text(storage.join(url, "config.yaml"), options) or "{}") or {}
        text = storage.read_text(storage.join(url, "metrics.jsonl"), options) or ""
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

    def images_per_s(self) -> float | None:
        """Median over the last epoch's reports: steady state, not the warm-up."""
        lines = self.metric_lines("images_per_s")
        if not lines:
            return None
        last_epoch = lines[-1]["epoch"]
        return statistics.median(line["images_per_s"] for line in lines if line["epoch"] == last_epoch)

    def epochs_done(self) -> int:
        return len({line["epoch"] for line in self.metric_lines("val/top1")})

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    @property
    def status(self) -> str:
        ends = [line["event"] for line in self.lines if line.get("event") in ("finished", "failed")]
        if ends:
            return ends[-1]
        return "running" if self.lines else "empty"
