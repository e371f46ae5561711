"""Learning-rate schedules. plateau is the paper's: divide by 10 when validation error stops
improving (they did it three times); step and cosine are the usual fixed alternatives."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR


class Schedule:
    """One interface for the loop: `after_step()` every batch, `after_epoch(val_top1)` every epoch."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: dict[str, Any], epochs: int, steps_per_epoch: int
    ) -> None:
        self.name = cfg["name"]
        lr = optimizer.param_groups[0]["lr"]
        if self.name == "plateau":
            floor = lr * cfg["factor"] ** cfg["max_reductions"]
            self.scheduler = ReduceLROnPlateau(
                optimizer, mode="max", factor=cfg["factor"], patience=cfg["patience"], min_lr=floor * 0.999
            )
        elif self.name == "step":
            self.scheduler = StepLR(optimizer, step_size=cfg["step_epochs"], gamma=cfg["factor"])
        else:
            total = max(1, epochs * steps_per_epoch)
            warmup = cfg["warmup_epochs"] * steps_per_epoch

            def cosine(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

            self.scheduler = LambdaLR(optimizer, cosine)

    def after_step(self) -> None:
        if self.name == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_top1: float) -> None:
        if self.name == "plateau":
            self.scheduler.step(val_top1)
        elif self.name == "step":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
