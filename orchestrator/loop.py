"""The per-worker training loop that Ray Train runs on every worker.

Each worker holds one AlexNet whose towers sit on its devices (two GPUs: the paper's split);
DDP wraps the whole module and averages gradients across workers. Rank 0 writes the tracker;
every rank calls ray.train.report at the same points (it is a barrier), and collectives such
as the log-step all-reduce also happen at the same steps on every rank."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model import AlexNet
from orchestrator import checkpoint, storage
from orchestrator.data import (
    Augment,
    DataError,
    DeviceTransform,
    EvalStream,
    TrainStream,
    load_manifest,
    loader,
    stable_seed,
    steps_per_epoch,
)
from orchestrator.devices import tower_devices
from orchestrator.evaluate import all_reduce, evaluate
from orchestrator.schedule import Schedule
from orchestrator.tracking import Tracker, public_config


@dataclass
class Position:
    """Where training stands: `batch` batches of `epoch` are done (the data resumes there)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_top1: float = 0.0


class NullTracker:
    """What ranks other than 0 log to."""

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def event(self, *args: Any, **kwargs: Any) -> None: ...
    def upload_folder(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, **kwargs: Any) -> None: ...
    def finish(self) -> None: ...


class Meter:
    """Training statistics between two log lines. `read` sums over all ranks (a collective:
    every rank calls it at the same step) and stops the run when too much data is unreadable."""

    def __init__(self, device: torch.device, max_skipped_fraction: float) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.max_skipped_fraction = max_skipped_fraction
        self.total_seen = self.total_skipped = 0.0
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.seen = self.batches = self.skipped = 0
        self.waited = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, skipped: int, waited: float) -> None:
        self.loss += loss.detach()  # no .item(): the GPU keeps running ahead of the host
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        self.batches += 1
        self.skipped += skipped
        self.waited += waited

    def read(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        seen, skipped = all_reduce(torch.tensor([self.seen, self.skipped], dtype=torch.float64)).tolist()
        self.total_seen += seen
        self.total_skipped += skipped
        total = self.total_seen + self.total_skipped
        if self.total_skipped > self.max_skipped_fraction * total:
            raise DataError(
                f"{self.total_skipped:.0f} of {total:.0f} samples were unreadable, more than "
                f"data.max_skipped_fraction={self.max_skipped_fraction}; rebuild the shards named in the "
                "warnings, or raise the limit"
            )
        metrics = {
            "train/loss": self.loss.item() / self.batches,
            "train/top1": self.correct.item() / max(1, self.seen),
            "images_per_s": seen / elapsed,
            "data_wait": self.waited / elapsed,
            "data/skipped": self.total_skipped,
        }
        self.reset()
        return metrics


def build_model(config: dict[str, Any], num_classes: int) -> AlexNet:
    m = config["model"]
    return AlexNet(num_classes, dropout=m["dropout"], width=m["width"], input_size=m["input_size"], init=m["init"])


def make_optimizer(model: torch.nn.Module, optim: dict[str, Any]) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights only, as in Caffe's reference recipe."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return torch.optim.SGD(
        [{"params": weights, "weight_decay": optim["weight_decay"]}, {"params": biases, "weight_decay": 0.0}],
        lr=optim["lr"],
        momentum=optim["momentum"],
    )


def train_loop(config: dict[str, Any]) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed, data_cfg = config["seed"], config["data"]
    batch_size, epochs = config["batch_size"], config["epochs"]
    manifest = load_manifest(data_cfg["url"], data_cfg["storage_options"])
    devices = ray.train.torch.get_devices() if torch.cuda.is_available() else [torch.device("cpu")]
    dev_a, dev_b, fused = tower_devices(devices, config["model"]["placement"])

    # --- the model, its optimiser and schedule, on this worker's devices
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = build_model(config, len(manifest.classes)).place(dev_a, dev_b, fused)
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = model
    if world > 1:  # device_ids=None: the module may span two devices
        net = DistributedDataParallel(model, device_ids=None, gradient_as_bucket_view=True)
    if config["compile"]:
        net = torch.compile(net)
    optimizer = make_optimizer(model, config["optim"])
    first_epoch_steps = steps_per_epoch(manifest.splits["train"], world, batch_size)
    schedule = Schedule(optimizer, config["schedule"], epochs, first_epoch_steps)

    # --- where the run stands: fresh, or the newest checkpoint after a restart or resume
    run_url = storage.join(config["storage"]["url"], config["run_name"])
    options = config["storage"]["options"]
    tracker = Tracker(config, run_url, config["logger"]["dir"]) if rank == 0 else NullTracker()
    pos = Position()
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            state = checkpoint.load(folder)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        pos = Position(**state["position"])
        tracker.event("resumed", step=pos.step, epoch=pos.epoch, batch=pos.batch)
    # Dropout and colour noise draw from here; reseeding at every checkpoint makes a resumed
    # run continue with exactly the random numbers the uninterrupted run would have used.
    torch.manual_seed(stable_seed(seed, rank, "step", pos.step))

    def autocast():
        bf16 = config["precision"] == "bf16"
        return torch.autocast(dev_a.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def upload(ckpt: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        """Ray registers a checkpoint only after this returns, so a half-written one is never
        chosen for resume; the upload is retried through storage outages."""
        url = storage.join(run_url, name)
        storage.put_dir(ckpt.path, url, options)
        path, fs = storage.ray_storage(url, options)
        return ray.train.Checkpoint(path=path, filesystem=fs)

    def report(metrics: dict[str, float]) -> None:
        """Every rank reports; rank 0 also hands Ray a checkpoint, uploaded in the background
        while training goes on."""
        ckpt = None
        if rank == 0:
            folder = tempfile.mkdtemp(prefix="alexnet-checkpoint-")
            checkpoint.save(
                folder,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                position=vars(pos),
                config=public_config(config),
            )
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(
            {**metrics, "step": pos.step, "epoch": pos.epoch},
            checkpoint=ckpt,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            checkpoint_upload_fn=upload,
            delete_local_checkpoint_after_upload=True,
        )
        torch.manual_seed(stable_seed(seed, rank, "step", pos.step))

    transform = DeviceTransform(manifest, dev_a, data_cfg["lighting"], config["channels_last"])
    short_side = manifest.settings.get("resize", config["model"]["input_size"])
    augment = Augment(data_cfg["augment"], config["model"]["input_size"], short_side)
    pin = dev_a.type == "cuda"
    meter = Meter(dev_a, data_cfg["max_skipped_fraction"])
    first_step = pos.step

    for epoch in range(pos.epoch, epochs):
        # --- train: every rank runs stream.steps batches, starting after those already done
        stream = TrainStream(
            manifest, data_cfg["url"], data_cfg["storage_options"], seed=seed, epoch=epoch, rank=rank,
            world=world, batch_size=batch_size, augment=augment, shuffle_buffer=data_cfg["shuffle_buffer"],
            skip=pos.batch,
        )  # fmt: skip
        if stream.steps == 0:
            raise DataError(f"the train split has too few samples for {world} workers x batch {batch_size}")
        net.train()
        meter.reset()
        tick = time.perf_counter()
        for images, labels, skipped in stream.batches(data_cfg["workers"], pin):
            waited = time.perf_counter() - tick
            x = transform(images, train=True)
            y = labels.to(dev_a, non_blocking=True)
            with autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.after_step()
            pos.step += 1
            pos.batch += 1
            meter.add(loss, logits, y, skipped, waited)
            if pos.step == first_step + 1:  # how long launching took, from the user's side
                tracker.event("first_step", step=pos.step)
            if pos.step % config["log_every_steps"] == 0 or pos.batch == stream.steps:
                metrics = {**meter.read(), "lr": optimizer.param_groups[0]["lr"]}
                tracker.log(pos.step, epoch, metrics)
                if rank == 0:
                    print(
                        f"epoch {epoch + 1}/{epochs} batch {pos.batch}/{stream.steps} step {pos.step} "
                        f"loss {metrics['train/loss']:.3f} top1 {metrics['train/top1']:.1%} lr {metrics['lr']:.2g} "
                        f"{metrics['images_per_s']:,.0f} img/s data-wait {metrics['data_wait']:.0%}",
                        flush=True,
                    )
            if pos.step % config["checkpoint"]["every_steps"] == 0 and pos.batch < stream.steps:
                report({})
            tick = time.perf_counter()

        # --- validate on every rank's share of val, then checkpoint the epoch's end
        val = EvalStream(
            manifest, data_cfg["url"], data_cfg["storage_options"], rank=rank, world=world,
            batch_size=batch_size, size=config["model"]["input_size"], ten_crop=config["eval"]["ten_crop"],
        )  # fmt: skip
        metrics = evaluate(model, loader(val, data_cfg["workers"], pin), transform, autocast)
        schedule.after_epoch(metrics["val/top1"])
        pos.epoch, pos.batch = epoch + 1, 0
        improved = metrics["val/top1"] > pos.best_top1
        pos.best_top1 = max(pos.best_top1, metrics["val/top1"])
        metrics["val/best_top1"] = pos.best_top1
        tracker.log(pos.step, epoch, metrics)
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{epochs} val top1 {metrics['val/top1']:.1%} top5 {metrics['val/top5']:.1%} "
                f"loss {metrics['val/loss']:.3f}",
                flush=True,
            )
            if improved:  # saved here and now, uploaded in the background
                folder = tempfile.mkdtemp(prefix="alexnet-best-")
                state = {"model": model.state_dict(), "position": vars(pos), "metrics": metrics}
                checkpoint.save(folder, **state, config=public_config(config))
                tracker.upload_folder(folder, storage.join(run_url, "best"), options)
        report(metrics)
    tracker.summary(**{"best/val_top1": pos.best_top1})
    tracker.finish()
