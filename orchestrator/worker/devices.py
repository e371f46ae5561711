"""Which device each tower goes to, from the devices Ray gave this worker."""

from __future__ import annotations

import torch


def tower_devices(devices: list[torch.device], placement: str) -> tuple[torch.device, torch.device, bool]:
    """(tower A's device, tower B's device, fused).

    auto: two devices -> one tower on each (the paper's split); one GPU -> both there, as
    grouped convolutions; the CPU -> both there through the two-tower code path, whose dense
    convolutions oneDNN runs ~10% faster than grouped ones (make bench, fp32 and bf16).
    split: the two-device code path, on one device when only one exists.
    single: both towers on the first device, as grouped convolutions.
    """
    if not devices:
        raise ValueError("this worker was given no device")
    first = devices[0]
    second = devices[1] if len(devices) > 1 else first
    if placement == "single":
        return first, first, True
    if placement == "split":
        return first, second, False
    return first, second, first == second and first.type != "cpu"
