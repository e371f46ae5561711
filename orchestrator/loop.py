"""The per-worker training loop that Ray Train runs on every worker.

Each worker holds one AlexNet whose towers sit on its devices (two GPUs: the paper's split);
DDP wraps the whole module and averages gradients across workers. Rank 0 writes the tracker;
every rank calls ray.train.report at the same points (it is a barrier)."""

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
    DeviceTransform,
    EvalStream,
    TrainStream,
    loader,
    stable_seed,
    steps_per_epoch,
)
from orchestrator.devices import tower_devices
from orchestrator.evaluate import evaluate
from orchestrator.schedule import Schedule
from orchestrator.tracking import Tracker, public_config
from shards.manifest import Manifest, read_manifest


@dataclass
class Position:
    """Where training stands: `batch` batches of `epoch` are done (the data resumes there)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_top1: float = 0.0


class NullTracker:
    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def event(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, **kwargs: Any) -> None: ...
    def finish(self) -> None: ...


def build_model(config: dict[str, Any], num_classes: int) -> AlexNet:
    m = config["model"]
    return AlexNet(
        num_classes, dropout=m["dropout"], width=m["width"], input_size=m["input_size"], init=m["init"]
    )


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
    seed = config["seed"]
    data_cfg = config["data"]
    manifest: Manifest = read_manifest(data_cfg["url"], data_cfg["storage_options"])
    devices = ray.train.torch.get_devices() if torch.cuda.is_available() else [torch.device("cpu")]
    dev_a, dev_b, fused = tower_devices(devices, config["model"]["placement"])

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
    batch_size, epochs = config["batch_size"], config["epochs"]
    train_shards = manifest.splits["train"]
    schedule = Schedule(
        optimizer, config["schedule"], epochs, steps_per_epoch(train_shards, world, batch_size, seed, 0)
    )
    pos = Position()

    run_url = storage.join(config["storage"]["url"], config["run_name"])
    tracker = Tracker(config, run_url, config["logger"]["dir"]) if rank == 0 else NullTracker()
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

    use_bf16 = config["precision"] == "bf16"

    def autocast():
        return torch.autocast(dev_a.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    transform = DeviceTransform(manifest, dev_a, data_cfg["lighting"], config["channels_last"])
    short_side = manifest.settings.get("resize", config["model"]["input_size"])
    augment = Augment(data_cfg["augment"], config["model"]["input_size"], short_side, train=True)
    pin = dev_a.type == "cuda"
    log_every, every_steps = config["log_every_steps"], config["checkpoint"]["every_steps"]

    def report(metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                checkpoint.save(
                    folder,
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    schedule=schedule.state_dict(),
                    position=vars(pos),
                    config=public_config(config),
                )
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**metrics, "step": pos.step, "epoch": pos.epoch}, checkpoint=ckpt)
        torch.manual_seed(stable_seed(seed, rank, "step", pos.step))

    for epoch in range(pos.epoch, epochs):
        stream = TrainStream(
            manifest,
            data_cfg["url"],
            data_cfg["storage_options"],
            seed=seed,
            epoch=epoch,
            rank=rank,
            world=world,
            batch_size=batch_size,
            augment=augment,
            shuffle_buffer=data_cfg["shuffle_buffer"],
            skip=pos.batch,
        )
        if stream.steps == 0:
            raise ValueError(f"the train split has too few samples for {world} workers x batch {batch_size}")
        net.train()
        loss_sum = torch.zeros((), device=dev_a)
        correct = torch.zeros((), device=dev_a)
        seen = batches = 0
        window_start = time.perf_counter()
        waited = 0.0
        tick = time.perf_counter()
        for images, labels in stream.batches(data_cfg["workers"], pin):
            waited += time.perf_counter() - tick
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
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            batches += 1
            if pos.step % log_every == 0 or pos.batch == stream.steps:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "train/loss": loss_sum.item() / batches,
                    "train/top1": correct.item() / max(1, seen),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": seen * world / elapsed,
                    "data_wait": waited / elapsed,
                }
                tracker.log(pos.step, epoch, metrics)
                if rank == 0:
                    print(
                        f"epoch {epoch + 1}/{epochs} batch {pos.batch}/{stream.steps} step {pos.step} "
                        f"loss {metrics['train/loss']:.3f} top1 {metrics['train/top1']:.1%} "
                        f"lr {metrics['lr']:.2g} "
                        f"{metrics['images_per_s']:,.0f} img/s data-wait {metrics['data_wait']:.0%}",
                        flush=True,
                    )
                loss_sum.zero_()
                correct.zero_()
                seen = batches = 0
                waited = 0.0
                window_start = time.perf_counter()
            if pos.step % every_steps == 0 and pos.batch < stream.steps:
                report({})
            tick = time.perf_counter()

        val = EvalStream(
            manifest,
            data_cfg["url"],
            data_cfg["storage_options"],
            rank=rank,
            world=world,
            batch_size=batch_size,
            size=config["model"]["input_size"],
            ten_crop=config["eval"]["ten_crop"],
        )
        metrics = evaluate(model, loader(val, data_cfg["workers"], pin), transform, autocast)
        schedule.after_epoch(metrics["val/top1"])
        pos.epoch, pos.batch = epoch + 1, 0
        improved = metrics["val/top1"] > pos.best_top1
        pos.best_top1 = max(pos.best_top1, metrics["val/top1"])
        metrics["val/best_top1"] = pos.best_top1
        tracker.log(pos.step, epoch, metrics)
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{epochs} val top1 {metrics['val/top1']:.1%} "
                f"top5 {metrics['val/top5']:.1%} "
                f"loss {metrics['val/loss']:.3f}",
                flush=True,
            )
        if rank == 0 and improved:
            save_best(run_url, config, model, metrics, pos)
        report(metrics)
    tracker.summary(**{"best/val_top1": pos.best_top1})
    tracker.finish()


def save_best(
    run_url: str, config: dict[str, Any], model: AlexNet, metrics: dict[str, float], pos: Position
) -> None:
    """The best model by val top-1, beside Ray's rotating checkpoints, which may drop it."""
    fs, path = storage.filesystem(storage.join(run_url, "best"), config["storage"]["options"])
    with tempfile.TemporaryDirectory() as folder:
        local = checkpoint.save(
            folder,
            model=model.state_dict(),
            position=vars(pos),
            metrics=metrics,
            config=public_config(config),
        )
        fs.makedirs(path, exist_ok=True)
        fs.put_file(local, f"{path}/{checkpoint.STATE_FILE}")
