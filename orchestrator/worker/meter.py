"""Training statistics between two log lines, summed over all ranks in one collective."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from orchestrator.data.bad_samples import DataError


class Meter:
    """Loss and correct predictions stay on the device between log lines (no host sync per
    step); `read` stacks them with the counts and sums the five numbers over all ranks in one
    all-reduce (a collective: every rank calls it at the same step). It also stops the run
    when more of the data than allowed was unreadable."""

    def __init__(
        self, device: torch.device, all_reduce: Callable[[torch.Tensor], torch.Tensor], max_skipped_fraction: float
    ) -> None:
        self.device, self.all_reduce, self.max_skipped_fraction = device, all_reduce, max_skipped_fraction
        self.total_seen = self.total_skipped = 0.0
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.float64, device=self.device)
        self.seen = self.batches = self.skipped = 0
        self.waited = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, skipped: int, waited: float) -> None:
        self.loss += loss.detach()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        self.batches += 1
        self.skipped += skipped
        self.waited += waited

    def read(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        step_s = elapsed / max(1, self.batches)  # every rank takes the same steps
        counts = torch.tensor([self.seen, self.batches, self.skipped], dtype=torch.float64, device=self.device)
        totals = self.all_reduce(torch.cat([torch.stack([self.loss, self.correct]), counts]))
        loss, correct, seen, batches, skipped = totals.tolist()
        self.total_seen += seen
        self.total_skipped += skipped
        total = self.total_seen + self.total_skipped
        if self.total_skipped > self.max_skipped_fraction * total:
            raise DataError(
                f"{self.total_skipped:.0f} of {total:.0f} samples were unreadable, more than "
                f"data.max_skipped_fraction={self.max_skipped_fraction}; rebuild the shards named in the "
                "warnings, or raise the limit"
            )
        metrics = {
            "train/loss": loss / max(1, batches),
            "train/top1": correct / max(1, seen),
            "images_per_s": seen / elapsed,
            "data_wait": self.waited / elapsed,
            "data/skipped": self.total_skipped,
            "step_s": step_s,
        }
        self.reset()
        return metrics
