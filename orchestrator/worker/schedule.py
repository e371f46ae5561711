"""Learning-rate schedules. plateau is the paper's: divide by 10 when validation error stops
improving (they did it three times); step and cosine are the usual fixed alternatives.

Every schedule can start with a linear warm-up (`schedule.warmup_epochs`), which a linearly
scaled learning rate needs at large global batches (Goyal et al. 2017): the lr rises from
lr / warmup_steps to lr over those steps; plateau makes no decision during warm-up."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from orchestrator.config import ScheduleConfig


class Schedule:
    """One interface for the loop: `after_step()` every batch, `after_epoch(val_top1)` every epoch."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float,
    ) -> None:
        self.name, self.optimizer = cfg.name, optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup = round(warmup_epochs * steps_per_epoch)
        self.steps = 0
        if self.name == "plateau":
            floor = self.base_lrs[0] * cfg.factor**cfg.max_reductions
            self.scheduler = ReduceLROnPlateau(
                optimizer, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=floor * 0.999
            )
        elif self.name == "step":
            self.scheduler = StepLR(optimizer, step_size=cfg.step_epochs, gamma=cfg.factor)
        else:
            total = max(1, epochs * steps_per_epoch)
            warmup = self.warmup

            def cosine(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

            self.scheduler = LambdaLR(optimizer, cosine)
        self._warm()

    def _warm(self) -> None:
        """plateau and step: the warm-up's lr for the coming step (cosine's lambda has its own)."""
        if self.name != "cosine" and self.steps <= self.warmup and self.warmup > 0:
            fraction = min(1.0, (self.steps + 1) / self.warmup)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * fraction

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup

    def after_step(self) -> None:
        self.steps += 1
        if self.name == "cosine":
            self.scheduler.step()
        else:
            self._warm()

    def after_epoch(self, val_top1: float) -> None:
        if self.name == "plateau" and not self.warming_up:  # no verdict on a half-warm lr
            self.scheduler.step(val_top1)
        elif self.name == "step":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
