"""Where a step of the two-tower net goes: each tower's forward and backward, and the crossings
between the towers (between the GPUs), timed apart. What a user needs to see whether two GPUs
per model pay off: a tower that waits for the other, or crossings that cost more than they save.

The step is cut at every crossing: each segment's input is a leaf of its own, so each segment's
backward runs alone and is timed alone, and the crossings' backward is timed between them. The
gradients are those of an uncut step (the tests compare them). Each part is timed with the
device synchronised around it (wall time: the CPU has nothing to synchronise)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from model.alexnet import AlexNet


class _Clock:
    def __init__(self, devices: set[torch.device]) -> None:
        self.devices = [d for d in devices if d.type == "cuda"]
        self.parts: dict[str, float] = {}

    def sync(self) -> None:
        for device in self.devices:
            torch.cuda.synchronize(device)

    @contextlib.contextmanager
    def part(self, name: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def profile_split_step(
    model: AlexNet,
    x: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Forward and backward of one batch through the split path, leaving the gradients in the
    parameters; seconds per part: tower_{a,b}_{forward,backward}, crossings, loss, total."""
    dev_a, dev_b = model.placement.tower_a, model.placement.tower_b
    clock = _Clock({dev_a, dev_b})
    segments = list(zip(model.segments(model.tower_a), model.segments(model.tower_b), strict=True))
    ins: list[tuple[torch.Tensor, torch.Tensor]] = []  # each segment's leaf inputs
    outs: list[tuple[torch.Tensor, torch.Tensor]] = []
    crossings: list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = []
    with autocast():
        a, b = x.to(dev_a), x.to(dev_b)
        for i, (segment_a, segment_b) in enumerate(segments):
            if i:
                with clock.part("crossings"):
                    sent = (_leaf(outs[-1][0]), _leaf(outs[-1][1]))
                    received = model.cross(*sent)
                crossings.append((sent, received))
                a, b = _leaf(received[0]), _leaf(received[1])
            ins.append((a, b))
            with clock.part("tower_a_forward"):
                out_a = segment_a(a)
            with clock.part("tower_b_forward"):
                out_b = segment_b(b)
            outs.append((out_a, out_b))
        with clock.part("loss"):
            last = (_leaf(outs[-1][0]), _leaf(outs[-1][1]))
            logits = torch.cat([last[0], last[1].to(dev_a)], 1)
            loss = F.cross_entropy(logits.float(), labels.to(dev_a))
            loss.backward()
    grads = (last[0].grad, last[1].grad)
    for i in reversed(range(len(segments))):
        (out_a, out_b), (in_a, in_b) = outs[i], ins[i]
        with clock.part("tower_a_backward"):
            out_a.backward(grads[0])
        with clock.part("tower_b_backward"):
            out_b.backward(grads[1])
        if i:
            sent, received = crossings[i - 1]
            with clock.part("crossings"):
                torch.autograd.backward(received, (in_a.grad, in_b.grad))
            grads = (sent[0].grad, sent[1].grad)
    parts = clock.parts
    parts["total"] = sum(parts.values())
    return parts


def summarize(parts: dict[str, float]) -> dict[str, float]:
    """The figures a log line carries: each tower's time, the imbalance between them (0: equal;
    0.2: one tower waits a fifth of the other's time) and the crossings' share of the step."""
    tower_a = parts["tower_a_forward"] + parts["tower_a_backward"]
    tower_b = parts["tower_b_forward"] + parts["tower_b_backward"]
    return {
        "tower_a_ms": 1000 * tower_a,
        "tower_b_ms": 1000 * tower_b,
        "crossings_ms": 1000 * parts["crossings"],
        "tower_imbalance": abs(tower_a - tower_b) / max(tower_a, tower_b, 1e-12),
        "crossing_share": parts["crossings"] / max(parts["total"], 1e-12),
    }
