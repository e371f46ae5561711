"""One worker's training: the two-tower AlexNet on this worker's devices (two GPUs: the paper's
split), DDP across workers, the paper's recipe. It reaches the cluster only through a `Cluster`
(rank, world, devices, a sum over ranks, checkpoints in and out), so the same code runs under
Ray Train, under torchrun and in the tests.

Every rank runs the same steps: the same number of batches per epoch (data.py), the metric
collective at the same log steps, and `report` at the same checkpoints (Ray's is a barrier)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model.profile import profile_split_step
from model.profile import summarize as summarize_profile
from model.summary import train_flops_per_image
from orchestrator.config import TrainConfig, public_config
from orchestrator.data.augment import Augment
from orchestrator.data.bad_samples import DataError
from orchestrator.data.device_transform import DeviceTransform
from orchestrator.data.plan import stable_seed, steps_per_epoch
from orchestrator.data.shard_reader import load_manifest
from orchestrator.data.streams import EvalStream, TrainStream, loader
from orchestrator.logs import setup as setup_logging
from orchestrator.runs.folder import EARLY_STOP, PAUSED, RunFolder
from orchestrator.runs.tracking import NullTracker, Tracker
from orchestrator.worker import checkpoint, gradients, host_memory
from orchestrator.worker.cluster import Cluster
from orchestrator.worker.devices import tower_devices
from orchestrator.worker.evaluation import evaluate
from orchestrator.worker.meter import Meter
from orchestrator.worker.network import autocast, build_model, make_optimizer
from orchestrator.worker.perf import Speed, peak_flops
from orchestrator.worker.schedule import Schedule

log = logging.getLogger(__name__)

# How often the ranks agree on a stop request on GPUs: reading the agreed value waits for the
# GPU's queued work, so not every step (on the CPU it costs nothing: every step).
STOP_CHECK_STEPS = 10
# How long the end of a run waits for the best checkpoint's upload before it is logged to W&B.
UPLOAD_WAIT_S = 600


@dataclass
class Position:
    """Where training stands: `batch` batches of `epoch` are done (the data resumes there)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_top1: float = 0.0
    best_epoch: int = 0  # the epoch (from 1) of best_top1; 0 in checkpoints from before it was kept


class Trainer:
    def __init__(self, config: TrainConfig, cluster: Cluster) -> None:
        self.config, self.cluster = config, cluster
        setup_logging(cluster.rank)
        checkpoint.clear_stale()  # what killed processes left on this machine
        if config.perf.reuse_host_memory:
            host_memory.keep_freed_blocks()
        data = config.data
        self.manifest = load_manifest(data.url, data.storage_options)
        dev_a, dev_b, fused = tower_devices(cluster.devices, config.model.placement)
        self.device = dev_a

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = build_model(config.model, len(self.manifest.classes)).place(dev_a, dev_b, fused)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        self.hook_state = None  # the comm hook's (PowerSGD's error feedback): checkpointed
        if cluster.world > 1:  # device_ids=None: the module may span two devices
            self.ddp = DistributedDataParallel(
                self.model, device_ids=None, gradient_as_bucket_view=True, bucket_cap_mb=config.ddp.bucket_cap_mb
            )
            self.hook_state = gradients.attach(self.ddp, config.ddp, config.seed)
            if config.ddp.comm_hook == "fp16" and cluster.rank == 0:
                log.warning(gradients.FP16_WARNING)
            self.net = self.ddp
        if config.compile:
            self.net = torch.compile(self.net)
        self.optimizer = make_optimizer(self.model, config.optim, config.lr)
        # An epoch: `batches` per rank, `steps` optimizer steps of optim.accumulate batches each
        accumulate = config.optim.accumulate
        self.steps = steps_per_epoch(self.manifest.splits["train"], cluster.world, config.batch_size) // accumulate
        self.batches = self.steps * accumulate
        if self.steps == 0:
            raise DataError(
                f"the train split has too few samples for {cluster.world} workers x batch {config.batch_size}"
                + (f" x {accumulate} accumulated batches" if accumulate > 1 else "")
            )
        self.schedule = Schedule(self.optimizer, config.schedule, config.epochs, self.steps, config.warmup_epochs)

        self.position = Position()
        self.folder = RunFolder.of(config)
        self.tracker = Tracker(config, self.folder) if cluster.rank == 0 else NullTracker()
        self.transform = DeviceTransform(self.manifest, dev_a, data.lighting, config.channels_last, data.normalize)
        short_side = self.manifest.settings.get("resize", config.model.input_size)
        self.augment = Augment(data.augment, config.model.input_size, short_side)
        self.meter = Meter(dev_a, cluster.all_reduce, data.max_skipped_fraction)
        dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        peak = peak_flops(dev_a, dtype) * len({dev_a, dev_b})
        self.speed = Speed(train_flops_per_image(self.model), peak, cluster.world)
        self.val_seconds = 0.0  # the last validation's, for the ETA
        self.saved_at = -1  # the step of the last checkpoint written

    # --- the run, top to bottom
    def fit(self) -> str:
        """The whole run from where its checkpoint left it: "finished", "stopped" when a stop
        was requested (then with a checkpoint at the step it stopped), or "paused" at until_epoch."""
        self.restore()
        self.record_workers()
        c = self.config
        scaled = c.optim.scale_lr == "linear"
        log.info(
            "training %s on %d worker(s) x %s: global batch %d, lr %.4g%s, warm-up %g epochs, %d steps per epoch",
            c.run_name, self.cluster.world, "+".join(str(d) for d in self.cluster.devices), c.global_batch, c.lr,
            f" (optim.lr {c.optim.lr:g} x {c.global_batch}/{c.optim.reference_batch})" if scaled else "",
            c.warmup_epochs, self.steps,
        )  # fmt: skip
        first_step = self.position.step
        for epoch in range(self.position.epoch, c.epochs):
            if c.until_epoch is not None and epoch >= c.until_epoch:
                return self.pause()
            if not self.train_epoch(epoch, first_step):
                return self.stop()
            metrics = self.validate()
            self.end_epoch(epoch, metrics)
            if epoch + 1 < c.epochs and self.stop_agreed(every=1):
                return self.stop()
        self.tracker.summary(**{"best/val_top1": self.position.best_top1})
        self.log_best_checkpoint()
        self.tracker.finish()
        return "finished"

    def record_workers(self) -> None:
        """Each rank's node and devices into the run's record, so a user sees where every
        worker ran and that each got its two GPUs."""
        places = self.cluster.gather(self.cluster.whereabouts())
        for place in places:
            self.tracker.event("worker", **place)
        nodes = {p["node"] for p in places}
        log.info("%d worker(s) on %d node(s); rank 0 on %s", len(places), len(nodes), ", ".join(places[0]["devices"]))

    def train_epoch(self, epoch: int, first_step: int) -> bool:
        """The rest of this epoch's batches (all of them unless resuming mid-epoch); False when
        the ranks agreed to stop before its end."""
        c, pos = self.config, self.position
        stream = TrainStream(
            self.manifest, c.data.url, c.data.storage_options, seed=c.seed, epoch=epoch, rank=self.cluster.rank,
            world=self.cluster.world, batch_size=c.batch_size, augment=self.augment,
            shuffle_buffer=c.data.shuffle_buffer, skip=pos.batch,
        )  # fmt: skip
        self.net.train()
        self.meter.reset()
        tick = time.perf_counter()
        for images, labels, skipped in stream.batches(c.data.workers, pin_memory=self.device.type == "cuda"):
            if pos.batch == self.batches:  # the last few, short of a whole accumulation
                break
            waited = time.perf_counter() - tick
            micro = pos.batch % c.optim.accumulate  # this batch's place in its optimizer step
            self.reseed(micro)
            labels = labels.to(self.device, non_blocking=True)
            x = self.transform(images, train=True)
            every = c.perf.profile_every_steps
            if every and micro == 0 and (pos.step + 1) % every == 0 and self.model.placement.split_path:
                self.profile(epoch, x, labels)
            logits, loss = self.step(x, labels, micro)
            pos.batch += 1
            self.meter.add(loss, logits, labels, skipped, waited)
            tick = time.perf_counter()
            if micro + 1 < c.optim.accumulate:
                continue
            pos.step += 1
            if pos.step == first_step + 1:  # how long launching took, from the user's side
                self.tracker.event("first_step", step=pos.step)
            if pos.step % c.log_every_steps == 0 or pos.batch == self.batches:
                self.log_train(epoch)
            if pos.step % c.checkpoint.every_steps == 0 and pos.batch < self.batches:
                self.save({})
            if self.stop_agreed():
                return False
            tick = time.perf_counter()
        return True

    def stop_agreed(self, every: int | None = None) -> bool:
        """Whether any rank was asked to stop: one all-reduce at the same steps on every rank
        (each step on the CPU, every STOP_CHECK_STEPS on GPUs), so all stop after the same step."""
        every = every or (1 if self.device.type == "cpu" else STOP_CHECK_STEPS)
        if self.position.step % every:
            return False
        asked = torch.tensor([float(self.cluster.stop_requested())])
        return self.cluster.all_reduce(asked).item() > 0

    def stop(self) -> str:
        """A checkpoint at this very step (unless one was just written), and the run marked
        stopped: `resume=true` continues exactly here. A sweep's scheduler asks the same way
        (reason EARLY_STOP); such a run is recorded as stopped early after its last epoch."""
        pos = self.position
        if self.saved_at != pos.step:
            self.save({})
        self.log_best_checkpoint()
        if self.cluster.rank == 0 and self.folder.stop_reason() == EARLY_STOP:
            self.tracker.event(EARLY_STOP, epoch=pos.epoch, step=pos.step)
            log.info("stopped early by the sweep's scheduler after epoch %d", pos.epoch)
            self.tracker.finish(status="stopped early", stopped_at_epoch=pos.epoch)
            return "stopped"
        self.tracker.event("stopped", step=pos.step, epoch=pos.epoch, batch=pos.batch)
        log.info(
            "stopped at step %d (epoch %d, batch %d/%d) with a checkpoint there; resume=true continues from it",
            pos.step, pos.epoch + 1, pos.batch, self.batches,
        )  # fmt: skip
        self.tracker.finish(status="stopped")
        return "stopped"

    def pause(self) -> str:
        """The end of `until_epoch` (its checkpoint is written): the run ends "paused", its W&B
        run finished and tagged so; resume=true continues with the next epoch, the schedule as
        if never paused. A sweep's synchronous halving pauses every run at each rung this way."""
        pos = self.position
        if self.saved_at != pos.step:
            self.save({})
        self.log_best_checkpoint()
        self.tracker.event(PAUSED, epoch=pos.epoch, step=pos.step)
        log.info("paused after epoch %d (until_epoch); resume=true continues from there", pos.epoch)
        self.tracker.finish(status=PAUSED, paused_at_epoch=pos.epoch)
        return PAUSED

    def log_best_checkpoint(self) -> None:
        """Rank 0: the run's best checkpoint (best/) into W&B as a model artifact by reference,
        once its upload has ended, with the val top-1 that made it best."""
        pos = self.position
        if self.cluster.rank != 0 or pos.best_top1 <= 0:
            return
        if not self.cluster.wait_for_uploads(UPLOAD_WAIT_S):
            log.warning("the best checkpoint was still uploading after %d s; not logged to W&B", UPLOAD_WAIT_S)
            return
        epoch = {"epoch": pos.best_epoch} if pos.best_epoch else {}
        self.tracker.checkpoint(self.folder.best_url, **{"val/top1": pos.best_top1, **epoch}, run=self.config.run_name)

    def step(self, x: torch.Tensor, labels: torch.Tensor, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's forward and backward; the SGD step after the last of optim.accumulate
        batches, whose gradients are the mean over all of them. Only that last backward
        all-reduces (DDP's no_sync on the others). The loss stays on the device."""
        accumulate = self.config.optim.accumulate
        last = micro == accumulate - 1
        sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.config.precision):
                logits = self.net(x)
            loss = F.cross_entropy(logits.float(), labels)
            (loss / accumulate if accumulate > 1 else loss).backward()
        if last:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.after_step()
        return logits, loss

    def profile(self, epoch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        """This batch once more, each tower's forward and backward and the crossings timed
        apart; its random numbers and gradients are thrown away, so training is unchanged."""
        cuda = [d for d in {self.model.placement.tower_a, self.model.placement.tower_b} if d.type == "cuda"]
        with torch.random.fork_rng(devices=cuda):
            parts = profile_split_step(self.model, x, labels, lambda: autocast(self.device, self.config.precision))
        self.optimizer.zero_grad(set_to_none=True)
        figures = summarize_profile(parts)
        self.tracker.log(self.position.step, epoch, {f"perf/{k}": v for k, v in figures.items()})
        log.info(
            "profile: tower A %.1f ms, tower B %.1f ms (imbalance %.0f%%), crossings %.1f ms (%.0f%% of the step)",
            figures["tower_a_ms"], figures["tower_b_ms"], 100 * figures["tower_imbalance"],
            figures["crossings_ms"], 100 * figures["crossing_share"],
        )  # fmt: skip

    def log_train(self, epoch: int) -> None:
        pos = self.position
        metrics = self.meter.read()
        step_s = metrics.pop("step_s")
        epochs_after = self.config.epochs - epoch - 1
        run_left = self.val_seconds + epochs_after * (self.batches * step_s + self.val_seconds)
        perf = self.speed.metrics(
            metrics["images_per_s"], metrics["data_wait"], step_s, self.batches - pos.batch, run_left
        )
        metrics.update(perf, lr=self.optimizer.param_groups[0]["lr"])
        self.tracker.log(pos.step, epoch, metrics)
        log.info(
            "epoch %d/%d batch %d/%d step %d loss %.3f top1 %.1f%% lr %.2g | %s",
            epoch + 1, self.config.epochs, pos.batch, self.batches, pos.step, metrics["train/loss"],
            100 * metrics["train/top1"], metrics["lr"], Speed.describe(perf),
        )  # fmt: skip

    def validate(self) -> dict[str, float]:
        """Every rank evaluates its share of the val split; the totals are summed."""
        c = self.config
        val = EvalStream(
            self.manifest, c.data.url, c.data.storage_options, rank=self.cluster.rank, world=self.cluster.world,
            batch_size=c.batch_size, size=c.model.input_size, ten_crop=c.eval.ten_crop,
        )  # fmt: skip
        batches = loader(val, c.data.workers, pin_memory=self.device.type == "cuda")
        start = time.perf_counter()
        metrics = evaluate(
            self.model, batches, self.transform, lambda: autocast(self.device, c.precision), self.cluster.all_reduce
        )
        self.val_seconds = time.perf_counter() - start
        if c.perf.reuse_host_memory:
            host_memory.release()  # what its larger batches (ten-crop's) left free
        return metrics

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pos = self.position
        self.schedule.after_epoch(metrics["val/top1"])
        pos.epoch, pos.batch = epoch + 1, 0
        improved = metrics["val/top1"] > pos.best_top1
        if improved:
            pos.best_top1, pos.best_epoch = metrics["val/top1"], epoch + 1
        metrics["val/best_top1"] = pos.best_top1
        self.tracker.log(pos.step, epoch, metrics)
        log.info(
            "epoch %d/%d val top1 %.1f%% top5 %.1f%% loss %.3f",
            epoch + 1, self.config.epochs, 100 * metrics["val/top1"], 100 * metrics["val/top5"], metrics["val/loss"],
        )  # fmt: skip
        self.save(metrics, best=improved)

    # --- checkpoints: one path, through the cluster
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "position": asdict(self.position),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.position = Position(**state["position"])
        if self.hook_state is not None and "comm_hook" in state:
            self.hook_state.load_state_dict(state["comm_hook"])

    def save(self, metrics: dict[str, float], best: bool = False) -> None:
        """Every rank reports; rank 0 also hands over a checkpoint (best: kept as best/ too)."""
        folder = None
        hook = None
        if self.hook_state is not None:  # a collective: every rank, at the same save
            hook = self.hook_state.state_dict(self.mean_over_ranks)
        if self.cluster.rank == 0:
            folder = checkpoint.stage(self.config.run_name)
            state = self.state_dict() | ({"comm_hook": hook} if hook else {})
            checkpoint.save(folder, **state, metrics=metrics, config=public_config(self.config))
        pos = self.position
        self.cluster.report({**metrics, "step": pos.step, "epoch": pos.epoch}, folder, best)
        self.saved_at = pos.step

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        return (self.cluster.all_reduce(values.clone()) / self.cluster.world).to(values.device)

    def restore(self) -> None:
        with self.cluster.restored_checkpoint() as folder:
            if folder is not None:
                self.load_state_dict(checkpoint.load(folder))
                pos = self.position
                self.saved_at = pos.step  # a stop or pause right away needs no second copy of it
                self.tracker.event("resumed", step=pos.step, epoch=pos.epoch, batch=pos.batch)

    def reseed(self, micro: int = 0) -> None:
        """Before every batch: its dropout masks and colour noise depend on (seed, rank, step,
        its place in an accumulated step) alone, so a run resumed at any step (a checkpoint, a
        stop) repeats the uninterrupted run's random numbers exactly. A seed costs
        microseconds; a step, milliseconds."""
        where = ("step", self.position.step) + ((micro,) if micro else ())
        torch.manual_seed(stable_seed(self.config.seed, self.cluster.rank, *where))
