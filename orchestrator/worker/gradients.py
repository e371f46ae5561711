"""How gradients cross workers. DDP all-reduces them bucket by bucket while the backward pass
runs (`ddp.bucket_cap_mb` sets the bucket size); `ddp.comm_hook` swaps what a bucket sends for
one of PyTorch's communication hooks (torch.distributed.algorithms.ddp_comm_hooks):

- none: fp32 gradients, 244 MB a step for the paper net (58.6M of its 61.0M parameters are in
  the fully-connected layers).
- bf16 / fp16: each bucket cast to 16 bits for the all-reduce and back: half the bytes.
- powersgd: each matrix-shaped gradient sent as a rank-r product P Q^T (Vogels et al. 2019,
  "PowerSGD"), with error feedback so what is not sent this step is added to the next; plain
  all-reduce for the first `ddp.powersgd_start_step` steps, as the paper warms up.

The PowerSGD state (error feedback, the warm-started P and Q, its random generator) is part of
every checkpoint, so a resumed run takes the steps the uninterrupted one would have. Each rank's
error feedback is its own, but what PowerSGD sends depends only on the mean over ranks of
(gradient + error): every step before its all-reduces is linear in that matrix. So a checkpoint
keeps one copy, the mean of the ranks' errors, and every rank resumes from it: the same
approximation, the same update (to float rounding), at 1/world of the size."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress
from torch.nn.parallel import DistributedDataParallel

from orchestrator.config import DDPConfig

# Measured: the demo to the end, 2 workers (tools/gradient_traffic --quality, README)
FP16_WARNING = (
    "ddp.comm_hook=fp16 cost 34 points of val top-1 on the demo: gradients below fp16's range flush to "
    "zero without a loss scale; ddp.comm_hook=bf16 halves the bytes too and stayed within 0.2 points"
)


def attach(ddp: DistributedDataParallel, config: DDPConfig, seed: int) -> PowerSGD | None:
    """Register the configured hook on `ddp`; the hook when it keeps state (PowerSGD)."""
    if config.comm_hook == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif config.comm_hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif config.comm_hook == "powersgd":
        return PowerSGD(ddp, config, seed)
    return None


class PowerSGD:
    """PyTorch's powerSGD_hook and its state, which keeps error feedback and the warm-started Q
    per DDP bucket. Buckets are not stable: DDP regroups parameters after its first step (in the
    order their gradients became ready), so a resumed run starts with another grouping than the
    one its checkpoint was written in. The state is therefore saved per parameter, and regrouped
    into whatever buckets the hook meets (on resume, and when DDP rebuilds them)."""

    def __init__(self, ddp: DistributedDataParallel, config: DDPConfig, seed: int) -> None:
        self.state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=config.powersgd_rank,
            start_powerSGD_iter=config.powersgd_start_step,
            use_error_feedback=True,
            warm_start=True,
            random_seed=seed,
        )
        self.names = {(p.device, p.data_ptr()): name for name, p in ddp.module.named_parameters()}
        self.shapes = {name: tuple(p.shape) for name, p in ddp.module.named_parameters()}
        self.layouts: dict[int, tuple[str, ...]] = {}  # bucket index -> its parameters, in order
        self.pending: dict[str, dict[str, torch.Tensor]] = {}  # per-parameter state not yet in a bucket
        # powerSGD_hook issues its second all-reduce (Q) from a callback of the first (P). On
        # gloo, callbacks run on gloo's threads as transfers finish, so with two buckets in
        # flight the ranks can issue their collectives in different orders: a size mismatch
        # ("Received data size doesn't match expected size") or a hang, measured on this
        # machine. There each bucket's exchange is finished before the next begins. (NCCL's
        # futures run callbacks in issue order, so GPUs keep the overlap.)
        self.one_bucket_at_a_time = dist.get_backend() == "gloo"
        ddp.register_comm_hook(self, PowerSGD.hook)

    @staticmethod
    def hook(self, bucket):  # no annotations: DDP checks them, and these would be strings here
        """(self: PowerSGD, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]"""
        names = tuple(self.names[(p.device, p.data_ptr())] for p in bucket.parameters())
        index = bucket.index()
        if self.layouts.get(index, names) != names:  # DDP rebuilt its buckets since the last step
            self.pending.update(self.per_parameter())
            self.layouts.clear()
            for memory in (self.state.error_dict, self.state.p_memory_dict, self.state.q_memory_dict):
                memory.clear()
        if index not in self.layouts and self.pending:
            self.regroup(index, names, bucket.buffer())
        self.layouts[index] = names
        future = powerSGD_hook.powerSGD_hook(self.state, bucket)
        if self.one_bucket_at_a_time:
            future.wait()
        return future

    def compressed(self, names: tuple[str, ...]) -> list[tuple[str, int]]:
        """The parameters of a bucket whose gradients PowerSGD compresses, in the order their Qs
        lie in the bucket's Q memory (grouped by matrix shape, as powerSGD_hook groups them),
        each with its Q's length."""
        groups: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for name in names:
            n = self.shapes[name][0]
            m = math.prod(self.shapes[name]) // n
            rank = min(n, m, self.state.matrix_approximation_rank)
            if len(self.shapes[name]) > 1 and _should_compress(n, m, rank, self.state.min_compression_rate)[0]:
                groups.setdefault((n, m), []).append((name, m * rank))
        return [item for group in groups.values() for item in group]

    def per_parameter(self) -> dict[str, dict[str, torch.Tensor]]:
        """The live per-bucket state, split per parameter: {name: {"error": ..., "q": ...}}."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for index, names in self.layouts.items():
            error = self.state.error_dict.get(index)
            if error is not None:
                sizes = [math.prod(self.shapes[n]) for n in names]
                for name, part in zip(names, error.split(sizes), strict=True):
                    out.setdefault(name, {})["error"] = part
            q = self.state.q_memory_dict.get(index)
            if q is not None:
                order = self.compressed(names)
                for (name, _), part in zip(order, q.split([size for _, size in order]), strict=True):
                    out.setdefault(name, {})["q"] = part
        return out

    def regroup(self, index: int, names: tuple[str, ...], buffer: torch.Tensor) -> None:
        """Bucket `index` (holding `names`) gets its parameters' pending state back."""
        mine = [self.pending.pop(name, {}) for name in names]
        if all("error" in s for s in mine):
            self.state.error_dict[index] = torch.cat([s["error"].to(buffer) for s in mine])
        order = self.compressed(names)
        by_name = dict(zip(names, mine, strict=True))
        if order and all("q" in by_name[name] for name, _ in order):
            self.state.q_memory_dict[index] = torch.cat([by_name[name]["q"].to(buffer) for name, _ in order])
            ps = sum(self.shapes[name][0] * size // (math.prod(self.shapes[name]) // self.shapes[name][0])
                     for name, size in order)  # fmt: skip
            self.state.p_memory_dict[index] = torch.empty(ps, device=buffer.device, dtype=buffer.dtype)

    def state_dict(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        """Plain tensors and numbers (checkpoints load with weights_only=True; PowerSGD's own
        pickling keeps a NumPy generator). A collective: every rank calls it at the same point."""
        kind, keys, pos, has_gauss, cached = self.state.rng.get_state()
        parameters = {**self.pending, **self.per_parameter()}
        for name in sorted(parameters):  # the same order on every rank: the error means are collectives
            if "error" in parameters[name]:
                parameters[name]["error"] = mean_over_ranks(parameters[name]["error"])
        return {
            "parameters": parameters,
            "iter": self.state.iter,
            "rng": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype("int64")),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        import numpy as np

        rng = saved["rng"]
        keys = rng["keys"].numpy().astype(np.uint32)
        self.state.rng.set_state((rng["kind"], keys, rng["pos"], rng["has_gauss"], rng["cached"]))
        self.state.iter = saved["iter"]
        self.pending = dict(saved["parameters"])
        self.layouts.clear()
