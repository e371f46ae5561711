"""Which device each tower goes to, from the devices Ray gave this worker."""

from __future__ import annotations

import torch


def tower_devices(devices: list[torch.device], placement: str) -> tuple[torch.device, torch.device, bool]:
    """(tower A's device, tower B's device, fused).

    auto: two devices -> one tower on each (the paper's split); one -> both there, fused.
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
    return first, second, first == second
