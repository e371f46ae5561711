"""How fast a run goes, in the units runs are compared by: images/s (global and per worker),
achieved TFLOP/s and MFU (model FLOPs utilisation) against a matrix product of the run's dtype
timed on the worker's device, the fraction of time spent waiting for data, and the ETA of the
epoch and of the run. Logged on every log line and to W&B as perf/*."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "alexnet-orchestrator", "peak-flops.json")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} x{torch.get_num_threads()} threads"


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matrix product in `dtype` on `device`: timed the first time
    for each kind of device, dtype and torch version, then read from ~/.cache."""
    key = f"{device_name(device)}|{dtype}|torch {torch.__version__}"
    try:
        with open(CACHE) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(7):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        if i >= 2:  # the first products warm up kernels and clocks
            times.append(time.perf_counter() - start)
    cache[key] = 2 * n**3 / statistics.median(times)
    try:
        os.makedirs(os.path.dirname(CACHE), exist_ok=True)
        partial = f"{CACHE}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(partial, CACHE)
    except OSError:  # a read-only home: time it again next run
        pass
    return cache[key]


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Speed:
    """perf/* from the meter's figures. `peak_per_worker` is the matrix-product rate of all the
    devices one worker trains on (two GPUs: twice one GPU's)."""

    flops_per_image: float
    peak_per_worker: float
    world: int

    def metrics(self, images_per_s: float, data_wait: float, step_s: float, steps_left: int, run_left_s: float) -> dict:
        per_worker = images_per_s / self.world
        return {
            "perf/images_per_s": images_per_s,
            "perf/images_per_s_per_worker": per_worker,
            "perf/tflops": images_per_s * self.flops_per_image / 1e12,
            "perf/mfu": per_worker * self.flops_per_image / self.peak_per_worker,
            "perf/data_wait": data_wait,
            "perf/step_s": step_s,
            "perf/eta_epoch_s": steps_left * step_s,
            "perf/eta_run_s": steps_left * step_s + run_left_s,
        }

    @staticmethod
    def describe(m: dict[str, float]) -> str:
        return (
            f"{m['perf/images_per_s']:,.0f} img/s ({m['perf/images_per_s_per_worker']:,.0f}/worker) "
            f"{m['perf/tflops']:.3g} TFLOP/s MFU {m['perf/mfu']:.1%} data-wait {m['perf/data_wait']:.0%} "
            f"ETA epoch {clock(m['perf/eta_epoch_s'])} run {clock(m['perf/eta_run_s'])}"
        )
