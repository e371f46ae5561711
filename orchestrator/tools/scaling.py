"""python -m orchestrator.scaling --img-per-s-per-worker X [--nodes 1,2,4,8,16,32] [--gbps 100,400]
[--hooks none,bf16,powersgd] [--plot scaling.png] [--check gradient-traffic.json]:
how many nodes pay off for data-parallel AlexNet.

Each step, every worker computes its batch (batch / X seconds) and then all-reduces its
gradients. A ring all-reduce over N workers moves 2(N-1)/N times the bytes through each
worker's link and takes 2(N-1) latency-bound hops per bucket, so

    step(N)  = batch / X + (1 - overlap) * [2(N-1)/N * bytes / link + 2(N-1) * buckets * latency]
    images/s = N * batch / step(N),   scaling efficiency = images/s / (N * X)

`bytes` is what the chosen `ddp.comm_hook` sends, counted from the model's layers (fp32: 244 MB
for the paper net; bf16/fp16: half; PowerSGD: (n + m) x rank per compressible n x m gradient),
the same figure `python -m orchestrator.tools.gradient_traffic` measures. `overlap` is the share
of the all-reduce that DDP hides behind the backward pass; 0 (the default) assumes none.
`--check` compares the projection with what gradient_traffic measured (1, 2, 4 gloo workers on
one machine), feeding it the measured compute time and link bandwidth."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass

import torch
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

from orchestrator.config import COMM_HOOKS

EFFICIENT = 0.9  # "keeps scaling": at least this share of N times one worker's speed
BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb


def bytes_per_step(model: torch.nn.Module, hook: str, rank: int = 4, min_compression_rate: float = 2) -> int:
    """What one worker hands to the all-reduce each step under `hook`: the layer-by-layer rule
    of PyTorch's hooks (PowerSGD compresses an n x m gradient to n x r and m x r when that is at
    least `min_compression_rate` times smaller, and sends the rest as they are)."""
    total = 0
    for p in model.parameters():
        if hook in ("bf16", "fp16"):
            total += p.numel() * 2
        elif hook == "powersgd" and p.dim() > 1:
            n = p.shape[0]
            m = p.numel() // n
            r = min(n, m, rank)
            compress, _, _ = _should_compress(n, m, r, min_compression_rate)
            total += ((n + m) * r if compress else p.numel()) * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


@dataclass
class Link:
    gbps: float  # each worker's network bandwidth, gigabits per second
    latency_s: float = 10e-6  # per hop of the ring

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8


def all_reduce_s(size: int, workers: int, link: Link) -> float:
    if workers == 1:
        return 0.0
    buckets = max(1, math.ceil(size / BUCKET_BYTES))
    return 2 * (workers - 1) / workers * size / link.bytes_per_s + 2 * (workers - 1) * buckets * link.latency_s


def images_per_s(workers: int, per_worker: float, batch: int, size: int, link: Link, overlap: float = 0.0,
                 hook_s: float = 0.0) -> float:  # fmt: skip
    """`hook_s`: the hook's own work per step (casting, PowerSGD's matrix products), if known."""
    step = batch / per_worker + hook_s + (1 - overlap) * all_reduce_s(size, workers, link)
    return workers * batch / step


def table(nodes: list[int], per_worker: float, batch: int, sizes: dict[str, int], links: list[Link],
          overlap: float) -> list[dict]:  # fmt: skip
    rows = []
    for hook, size in sizes.items():
        for link in links:
            for n in nodes:
                speed = images_per_s(n, per_worker, batch, size, link, overlap)
                rows.append({"hook": hook, "gbps": link.gbps, "nodes": n, "images_per_s": speed,
                             "efficiency": speed / (n * per_worker), "mb_per_step": size / 1e6})  # fmt: skip
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    """Per hook and link: up to how many nodes scaling stays >= 90% efficient, and past which
    node count a doubling adds less than half of what the new nodes would do alone."""
    lines = []
    for key in dict.fromkeys((r["hook"], r["gbps"]) for r in rows):
        mine = [r for r in rows if (r["hook"], r["gbps"]) == key]
        efficient = [r["nodes"] for r in mine if r["efficiency"] >= EFFICIENT]
        alone = mine[0]["images_per_s"] / mine[0]["nodes"]
        stops = next(
            (a["nodes"] for a, b in itertools.pairwise(mine)
             if b["images_per_s"] - a["images_per_s"] < 0.5 * (b["nodes"] - a["nodes"]) * alone),
            None,
        )  # fmt: skip
        lines.append(
            f"{key[0]} at {key[1]:g} Gb/s: >= {EFFICIENT:.0%} efficient up to "
            + (f"{max(efficient)} nodes" if efficient else "no node count here")
            + (f"; more than {stops} nodes stops paying" if stops else "; every step in the list pays")
        )
    return lines


HOOK_DTYPE = {"none": "fp32", "bf16": "bf16", "fp16": "fp16", "powersgd": "fp32"}


def check(measured: dict, hooks: list[str], batch: int = 2) -> list[dict]:
    """The projection against gradient_traffic's measurement (gloo workers sharing one machine).
    Its inputs, each measured apart: the compute time (the step under no_sync), the hook's own
    work (what the step costs over no_sync with one worker, where nothing crosses a link; with
    N workers on these few cores it slows as the compute does), the bytes, and the bus
    bandwidth of a plain all-reduce in the hook's dtype. Output: images/s, vs the measured."""
    rows = []
    workers = measured["workers"]
    alone = workers.get("1")
    for world, figures in sorted(workers.items(), key=lambda kv: int(kv[0])):
        for hook in hooks:
            if hook not in figures:
                continue
            f = figures[hook]
            bus = figures["bus_bytes_per_s"][HOOK_DTYPE[hook]] if int(world) > 1 else 1.0
            link = Link(gbps=bus * 8 / 1e9, latency_s=0.0)
            hook_s = 0.0
            if alone and hook in alone:
                slowdown = f["local_step_s"] / alone[hook]["local_step_s"]
                hook_s = alone[hook]["exposed_comm_s"] * slowdown
            per_worker = batch / f["local_step_s"]
            projected = images_per_s(int(world), per_worker, batch, int(f["bytes_per_step"]), link, hook_s=hook_s)
            actual = int(world) * batch / f["step_s"]
            rows.append({"workers": int(world), "hook": hook, "projected": projected, "measured": actual,
                         "error": projected / actual - 1})  # fmt: skip
    return rows


def plot(rows: list[dict], per_worker: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    nodes = sorted({r["nodes"] for r in rows})
    ax.plot(nodes, [n * per_worker for n in nodes], "k--", label="ideal")
    for key in dict.fromkeys((r["hook"], r["gbps"]) for r in rows):
        mine = [r for r in rows if (r["hook"], r["gbps"]) == key]
        ax.plot([r["nodes"] for r in mine], [r["images_per_s"] for r in mine], marker="o",
                label=f"{key[0]}, {key[1]:g} Gb/s")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes (one worker of two GPUs each)")
    ax.set_ylabel("images/s")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from model import AlexNet

    p = argparse.ArgumentParser(prog="python -m orchestrator.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--img-per-s-per-worker", type=float, help="one worker's training speed alone (its log line)")
    p.add_argument("--batch", type=int, default=128, help="images per worker per step")
    p.add_argument("--nodes", default="1,2,4,8,16,32")
    p.add_argument("--gbps", default="100,400", help="each node's network bandwidth, Gb/s")
    p.add_argument("--latency-us", type=float, default=10.0, help="per hop of the ring")
    p.add_argument("--hooks", default="none,bf16,powersgd", help=f"of {', '.join(COMM_HOOKS)}")
    p.add_argument("--powersgd-rank", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.0, help="share of the all-reduce hidden by backward")
    p.add_argument("--plot", help="also draw images/s against nodes into this PNG")
    p.add_argument("--check", help="gradient-traffic.json: compare the projection with that measurement")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    hooks = args.hooks.split(",")
    console = Console()
    if args.check:
        try:
            with open(args.check) as f:
                measured = json.load(f)
        except (OSError, ValueError) as err:
            p.error(f"cannot read {args.check} ({err}); make it with python -m orchestrator.tools.gradient_traffic")
        rows = check(measured, hooks)
        t = Table(title="projection vs measurement (gloo workers on this machine)")
        for column in ("workers", "hook", "projected img/s", "measured img/s", "error"):
            t.add_column(column, justify="right")
        for r in rows:
            t.add_row(
                str(r["workers"]), r["hook"], f"{r['projected']:.2f}", f"{r['measured']:.2f}", f"{r['error']:+.0%}"
            )
        console.print(t)
        return 0 if all(abs(r["error"]) <= 0.25 for r in rows) else 1
    if not args.img_per_s_per_worker:
        p.error("--img-per-s-per-worker is required: one worker's images/s, from its log line or make bench")
    model = AlexNet()
    sizes = {hook: bytes_per_step(model, hook, args.powersgd_rank) for hook in hooks}
    links = [Link(float(g), args.latency_us * 1e-6) for g in args.gbps.split(",")]
    nodes = [int(n) for n in args.nodes.split(",")]
    rows = table(nodes, args.img_per_s_per_worker, args.batch, sizes, links, args.overlap)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    t = Table(title=f"AlexNet, {args.img_per_s_per_worker:g} img/s per worker alone, batch {args.batch} per worker")
    for column in ("hook", "MB/step", "Gb/s", *(str(n) for n in nodes)):
        t.add_column(column, justify="right")
    for key in dict.fromkeys((r["hook"], r["gbps"]) for r in rows):
        mine = [r for r in rows if (r["hook"], r["gbps"]) == key]
        cells = [f"{r['images_per_s']:,.0f} {r['efficiency']:.0%}" for r in mine]
        t.add_row(key[0], f"{mine[0]['mb_per_step']:.1f}", f"{key[1]:g}", *cells)
    console.print(t)
    for line in verdicts(rows):
        console.print(line)
    if args.plot:
        plot(rows, args.img_per_s_per_worker, args.plot)
        console.print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
