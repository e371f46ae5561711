"""python -m orchestrator.tools.gradient_traffic [--workers 2,4] [--out gradient-traffic.json]:
what each `ddp.comm_hook` sends per step, and what that costs, measured on the paper net.

For each number of workers (gloo processes on this machine, one thread each) and each hook, the
paper net (61.0M parameters) takes a few forward/backward steps under DDP:

- bytes all-reduced per step: every tensor the hook hands to `dist.all_reduce`, counted (for
  `none`, PyTorch's allreduce_hook, the same fp32 all-reduce DDP runs without a hook);
- step seconds with the all-reduce, and without it (`no_sync`): their difference is the
  communication the backward pass did not hide;
- a plain all-reduce of the gradients' size in fp32, bf16 and fp16: the ring's bus bandwidth
  (2(N-1)/N x bytes / seconds) for each, which `orchestrator.scaling --check` projects with.

`make bench` runs it and keeps the ratios against `none`; `--quality` also trains the demo to the
end under each hook (2 workers, plain torch.distributed, same seed) and reports val top-1."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from model import AlexNet
from orchestrator.config import COMM_HOOKS, REPO_ROOT, DDPConfig
from orchestrator.tools import publish

BUS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP_STEPS = 3  # DDP rebuilds its buckets after step 1; PowerSGD starts at step 2 here
POWERSGD_START = 2


class Counted:
    """Bytes handed to dist.all_reduce while installed (the hooks call it through the module)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.original = dist.all_reduce

    def __enter__(self) -> Counted:
        def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size()
            return self.original(tensor, *args, **kwargs)

        dist.all_reduce = all_reduce
        return self

    def __exit__(self, *exc: object) -> None:
        dist.all_reduce = self.original


def measure(rank: int, world: int, port: int, hooks: list[str], steps: int, batch: int, out: str,
            net: dict[str, Any]) -> None:  # fmt: skip
    """One worker: every hook in turn on the same model (AlexNet(**net)) and batch."""
    from orchestrator.worker import gradients

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AlexNet(**net)
    x, y = torch.randn(batch, 3, model.input_size, model.input_size), torch.randint(0, model.num_classes, (batch,))
    gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    results: dict[str, Any] = {"gradient_bytes": gradient_bytes}
    for hook in hooks:
        ddp = DistributedDataParallel(model, device_ids=None, gradient_as_bucket_view=True)
        if hook == "none":  # what DDP does without a hook, through Python so it is counted
            ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        else:
            gradients.attach(ddp, DDPConfig(comm_hook=hook, powersgd_start_step=POWERSGD_START), seed=0)

        def step(sync: bool, ddp: DistributedDataParallel = ddp) -> None:
            with contextlib.nullcontext() if sync else ddp.no_sync():
                F.cross_entropy(ddp(x), y).backward()
            model.zero_grad(set_to_none=True)

        for _ in range(WARMUP_STEPS):
            step(True)
        with Counted() as counted:
            synced = timed(lambda: step(True), steps)
        local = timed(lambda: step(False), steps)
        results[hook] = {
            "bytes_per_step": counted.bytes / steps,
            "step_s": synced,
            "local_step_s": local,
            "exposed_comm_s": max(0.0, synced - local),
        }
        del ddp
    results["bus_bytes_per_s"] = {
        name: bus_bandwidth(gradient_bytes, world, steps, dtype) for name, dtype in BUS_DTYPES.items()
    }
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def timed(step: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()  # every worker starts the step together, as in training
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bus_bandwidth(size: int, world: int, repeats: int, dtype: torch.dtype) -> float:
    """A ring all-reduce moves 2(N-1)/N x size through each worker's link: that over the time,
    for `size` bytes of `dtype` (gloo reduces 16-bit floats in software, slower than fp32)."""
    tensor = torch.ones(size // torch.finfo(dtype).bits * 8, dtype=dtype)
    seconds = timed(lambda: dist.all_reduce(tensor), repeats)
    return 2 * (world - 1) / world * size / seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traffic(workers: list[int], hooks: list[str], steps: int = 3, batch: int = 2,
            net: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """{N: {hook: figures, "gradient_bytes", "bus_bytes_per_s"}} for each number of workers;
    the paper net unless `net` says otherwise (AlexNet's keyword arguments)."""
    net = net or {"lrn": "eager"}
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in workers:
            out = os.path.join(tmp, f"{world}.json")
            mp.spawn(measure, args=(world, free_port(), hooks, steps, batch, out, net), nprocs=world)
            with open(out) as f:
                found[world] = json.load(f)
    return found


def ratios(found: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Per hook and number of workers: bytes and exposed communication as fractions of `none`'s."""
    out = {}
    for world, figures in found.items():
        none = figures["none"]
        for hook in COMM_HOOKS:
            if hook == "none" or hook not in figures:
                continue
            out[f"comm_{hook}_bytes_vs_none_{world}w"] = figures[hook]["bytes_per_step"] / none["bytes_per_step"]
            if none["exposed_comm_s"] > 0:
                out[f"comm_{hook}_time_vs_none_{world}w"] = figures[hook]["exposed_comm_s"] / none["exposed_comm_s"]
    return out


def quality(hooks: list[str], shards: str, epochs: int) -> dict[str, float]:
    """Val top-1 of the demo trained to the end under each hook: 2 workers (torchrun), the same
    seed, data and epochs (PowerSGD: plain all-reduce for the first 10 of its 25 steps an epoch)."""
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        for hook in hooks:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                "-m", "orchestrator.local", f"run_name={hook}", f"ddp.comm_hook={hook}", f"epochs={epochs}",
                f"data.url={shards}", f"storage.url={runs}", "logger.mode=disabled", "data.workers=0",
                "ddp.powersgd_start_step=10",
            ]  # fmt: skip
            subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(os.path.join(runs, hook, "metrics.jsonl")) as f:
                vals = [line["val/top1"] for line in map(json.loads, f) if "val/top1" in line]
            results[hook] = vals[-1]
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.tools.gradient_traffic", description=__doc__)
    p.add_argument("--workers", default="1,2,4", help="numbers of gloo workers, comma-separated")
    p.add_argument("--hooks", default=",".join(COMM_HOOKS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per hook (after 3 warm-up steps)")
    p.add_argument("--quality", action="store_true", help="also train the demo to the end under each hook")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--shards", default=os.path.join(REPO_ROOT, "data", "shards", "demo"))
    p.add_argument("--out", default="gradient-traffic.json")
    args = p.parse_args(argv)
    hooks = args.hooks.split(",")
    found = traffic([int(w) for w in args.workers.split(",")], hooks, args.steps)
    result: dict[str, Any] = {"workers": found, "ratios": ratios({w: f for w, f in found.items() if w > 1})}
    if args.quality:
        result["val_top1"] = quality(hooks, args.shards, args.epochs)
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
