"""Top-1/top-5 and loss on the val split: this rank's share, summed over all ranks. Used by the
Trainer at every epoch's end and by `python -m orchestrator.evaluate`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from orchestrator.data.device_transform import DeviceTransform


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    transform: DeviceTransform,
    autocast: Callable[[], contextlib.AbstractContextManager],
    all_reduce: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Ten-crop batches (N, 10, H, W, 3) average the softmax of the ten crops, as in the paper.
    The totals stay on the device and are summed over ranks in one collective."""
    model.eval()
    device = transform.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in batches:
        labels = labels.to(device)
        crops = images.shape[1] if images.dim() == 5 else 1
        x = transform(images.flatten(0, 1) if crops > 1 else images, train=False)
        with autocast():
            probs = model(x).float().softmax(1)
        probs = probs.view(len(labels), crops, -1).mean(1)
        top5 = probs.topk(min(5, probs.shape[1]), 1).indices
        totals += torch.stack(
            [
                F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"),
                (top5[:, 0] == labels).sum(),
                (top5 == labels[:, None]).any(1).sum(),
                torch.tensor(len(labels), device=device),
            ]
        ).double()
    loss, top1, top5, count = all_reduce(totals).tolist()
    count = max(count, 1)
    return {"val/loss": loss / count, "val/top1": top1 / count, "val/top5": top5 / count, "val/images": count}
