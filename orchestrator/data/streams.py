"""One rank's batches for one epoch (train) or the val split (eval), and the DataLoader that makes
them in loader processes. Batches are made and seeded by the streams themselves."""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from orchestrator.data.augment import Augment, EvalCrop, decode_batch
from orchestrator.data.bad_samples import DataError, Skips
from orchestrator.data.plan import Reading, deal, stable_seed, steps_per_epoch, worker_share
from orchestrator.data.shard_reader import samples
from orchestrator.data.slots import BatchSlots, Filled, _open_slots
from shards.manifest import Manifest

log = logging.getLogger(__name__)

PREFETCH = 4  # batches each loader process makes ahead


class TrainStream(IterableDataset):
    """One rank's training batches for one epoch: (uint8 NHWC images, int64 labels).

    `skip` batches were consumed before a checkpoint: they are drawn and dropped undecoded."""

    def __init__(
        self,
        manifest: Manifest,
        root: str,
        storage_options: dict[str, Any],
        *,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        batch_size: int,
        augment: Augment,
        shuffle_buffer: int,
        skip: int = 0,
    ) -> None:
        self.root, self.storage_options = root, storage_options
        shards = manifest.splits["train"]
        self.reading = deal(shards, world, random.Random(stable_seed(seed, epoch)))[rank]
        self.steps = steps_per_epoch(shards, world, batch_size)
        self.key = (seed, epoch, rank)
        self.batch_size, self.augment, self.buffer, self.skip = batch_size, augment, shuffle_buffer, skip
        self.slots: BatchSlots | None = None  # set while batches() runs loader processes
        self.slots_id = 0

    def __len__(self) -> int:
        return self.steps - self.skip

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int] | Filled]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reading = worker_share(self.reading, self.steps, self.batch_size, worker, workers)
        mine = range(worker, self.steps, workers)
        skips = Skips()
        made = 0
        for index, batch in zip(mine, self._raw_batches(reading, worker, skips), strict=False):
            if index < self.skip:
                skips.take()  # counted before the checkpoint this run resumed from
                continue
            torch.manual_seed(stable_seed(*self.key, "batch", index))
            if self.slots is None:
                images, labels = decode_batch(batch, self.augment, skips)
                yield index, images, labels, skips.take()
                continue
            _, labels = decode_batch(batch, self.augment, skips, out=self.slots.fill(worker, made))
            yield Filled(index, worker, made, len(labels), labels.tolist(), skips.take(), self.slots_id)
            made += 1

    def batches(self, workers: int, pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """This epoch's batches in index order, decoded by `workers` loader processes (into
        `BatchSlots`), with the number of samples skipped as unreadable since the previous batch.

        Process w owns batches w, w+n, w+2n, ... The DataLoader always asks process 0 first, so
        after a mid-epoch resume a few arrive early; they wait here until their turn."""
        shape = (self.batch_size, self.augment.size, self.augment.size, 3)
        self.slots = BatchSlots.open(workers, PREFETCH + 1, shape) if workers else None
        self.slots_id = id(self.slots)
        if self.slots is not None:
            _open_slots[self.slots_id] = self.slots
        pending: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        expected, finished = self.skip, False
        try:
            for item in loader(self, workers, pin_memory):
                if isinstance(item, Filled):  # copied out at once: the slot goes back to its process
                    item = self.slots.take(item, pin=False)
                index, images, labels, skipped = item
                pending[index] = (images, labels, skipped)
                while expected in pending:
                    yield pending.pop(expected)
                    expected += 1
            finished = True
        finally:
            _open_slots.pop(self.slots_id, None)
            if self.slots is not None:
                self.slots.close(finished)
            self.slots = None

    def _raw_batches(self, reading: Reading, worker: int, skips: Skips) -> Iterator[list[dict[str, Any]]]:
        """Shuffled batches of raw samples. The reading holds exactly this worker's batches; only
        when damaged data leaves it short does it go round again, so DDP still gets every batch."""
        cycle = 0
        batch: list[dict[str, Any]] = []
        while True:
            rng = random.Random(stable_seed(*self.key, "worker", worker, cycle))
            drawn = 0
            shuffle = wds.filters.shuffle(self.buffer, min(self.buffer, 100), rng=rng)
            for sample in shuffle(samples(reading, self.root, self.storage_options, skips)):
                drawn += 1
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if drawn == 0:  # ending early would leave the other ranks waiting in DDP forever
                names = ", ".join(shard.name for shard in reading.shards) or "none"
                raise DataError(f"no readable sample in this worker's shards ({names}); rebuild them")
            cycle += 1


class EvalStream(IterableDataset):
    """One rank's share of the val split, in order; every sample once across all ranks.
    With ten_crop, images are (N, 10, H, W, 3): four corners, centre, and their flips."""

    def __init__(
        self,
        manifest: Manifest,
        root: str,
        storage_options: dict[str, Any],
        *,
        rank: int,
        world: int,
        batch_size: int,
        size: int,
        ten_crop: bool = False,
    ) -> None:
        self.root, self.storage_options = root, storage_options
        self.reading = deal(manifest.splits["val"], world, None)[rank]
        self.batch_size = batch_size
        self._crops = EvalCrop(size, manifest.settings.get("resize", size), ten_crop)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch: list[dict[str, Any]] = []
        skips = Skips()
        for sample in samples(self.reading.split(workers)[worker], self.root, self.storage_options, skips):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield decode_batch(batch, self._crops, skips)
                batch = []
        if batch:
            yield decode_batch(batch, self._crops, skips)


def _ignore_interrupts(worker_id: int) -> None:
    """Loader processes leave Ctrl-C and SIGTERM to the training process (a terminal, Slurm or
    `kill -- -pgid` signal the whole process group): a loader that died of one would end the run
    before its checkpoint. They still exit when the loader is done or the trainer dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(dataset: IterableDataset, workers: int, pin_memory: bool) -> DataLoader:
    """Batches are already made and seeded by the dataset. The DataLoader gets a generator of
    its own: starting its iterator would otherwise draw the loader processes' base seed from
    the global generator, which dropout and colour noise draw from, so a run resumed from a
    checkpoint would not repeat the uninterrupted run's random numbers."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=PREFETCH if workers else None,
        generator=torch.Generator(),
        worker_init_fn=_ignore_interrupts,
    )
