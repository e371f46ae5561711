"""Streaming shards to the model: which rank reads what, host-side uint8 crops, device-side
float normalisation and the paper's PCA colour noise.

What each rank sees is a pure function of (seed, epoch, rank, world size): shards are dealt to
ranks per epoch, each loader process shuffles its own stream with a seeded buffer, and every
batch's augmentation is seeded by its index. So every rank runs the same number of batches
(DDP never waits on a rank that ran dry), and a resumed run can skip exactly the batches a
checkpoint had consumed, without decoding them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2
from webdataset.tariterators import group_by_keys

from orchestrator import storage
from orchestrator.config import ConfigError
from orchestrator.tar_members import tar_members
from shards.manifest import MANIFEST_NAME, Manifest, ShardInfo

log = logging.getLogger(__name__)

PREFETCH = 4  # batches each loader process makes ahead


def stable_seed(*parts: object) -> int:
    """A stable 63-bit seed from parts (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Span:
    """Samples [start, stop) of one shard, in the order the shard holds them."""

    shard: ShardInfo
    start: int
    stop: int


@dataclass(frozen=True)
class Reading:
    """What one reader takes: consecutive spans of shards."""

    spans: tuple[Span, ...]

    @classmethod
    def whole(cls, shards: list[ShardInfo]) -> Reading:
        return cls(tuple(Span(s, 0, s.samples) for s in shards))

    @property
    def samples(self) -> int:
        return sum(span.stop - span.start for span in self.spans)

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return tuple(span.shard for span in self.spans)

    def take(self, start: int, stop: int) -> Reading:
        """Samples [start, stop) of this reading, counted across its spans."""
        spans, pos = [], 0
        for span in self.spans:
            size = span.stop - span.start
            low, high = max(start, pos), min(stop, pos + size)
            if low < high:
                spans.append(Span(span.shard, span.start + low - pos, span.start + high - pos))
            pos += size
        return Reading(tuple(spans))

    def split(self, parts: int) -> list[Reading]:
        """`parts` consecutive readings whose sizes differ by at most one sample."""
        n = self.samples
        return [self.take(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def deal(shards: list[ShardInfo], world: int, rng: random.Random | None) -> list[Reading]:
    """One Reading per rank, equal to within one sample. With a rng (training) the shard order
    is shuffled first, so each epoch cuts the sample sequence at other places. A rank's share
    starts or ends inside a shard at most once each: a shard is read by at most two ranks."""
    order = list(shards)
    if rng is not None:
        rng.shuffle(order)
    return Reading.whole(order).split(world)


def steps_per_epoch(shards: list[ShardInfo], world: int, batch_size: int) -> int:
    """Batches every rank runs in an epoch: the smallest rank's share in full batches. What is
    left out is under world x batch_size samples, and different ones every epoch."""
    return sum(s.samples for s in shards) // world // batch_size


def worker_share(reading: Reading, steps: int, batch_size: int, worker: int, workers: int) -> Reading:
    """Loader process `worker` of `workers` makes batches worker, worker + workers, ... (the
    DataLoader takes them in turn); it reads exactly those batches' samples, consecutive in the
    rank's reading, so no sample is drawn twice and none is left to a process that runs dry."""
    before = sum(len(range(w, steps, workers)) for w in range(worker))
    mine = len(range(worker, steps, workers))
    return reading.take(before * batch_size, (before + mine) * batch_size)


class Skips:
    """Samples lost to bad data in this process, counted until the loop collects them."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int, where: str, why: str) -> None:
        if n > 0:
            self.count += n
            log.warning("skipped %d sample(s) of %s: %s", n, where, why)

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


def load_manifest(root: str, storage_options: dict[str, Any]) -> Manifest:
    """The shards' manifest.json; a missing one is a ConfigError saying how to make shards."""
    try:
        with storage.open_url(storage.shard_url(root, MANIFEST_NAME), storage_options) as f:
            return Manifest.from_json(f.read().decode())
    except FileNotFoundError:
        raise ConfigError(
            f"data.url={root} holds no manifest.json; build shards there first (make shards, "
            "or python -m shards imagenet ... --out URL)"
        ) from None


def samples(reading: Reading, root: str, storage_options: dict[str, Any], skips: Skips) -> Iterator[dict[str, Any]]:
    """Raw (undecoded) samples of a Reading, one shard span at a time; reading a shard stops at
    its span's end. A shard that is missing, truncated or holds a non-JPEG is read as far as it
    goes: what it lacks is counted in `skips` with a warning naming the shard, and the stream
    goes on."""
    for span in reading.spans:
        url = storage.shard_url(root, span.shard.name)
        try:
            stream = storage.open_url(url, storage_options)
        except OSError as err:
            skips.add(span.stop - span.start, url, f"cannot open it ({type(err).__name__})")
            continue
        taken = 0
        with stream:
            # A truncated or corrupt tar ends the shard; the shortfall is counted below.
            members = tar_members(url, stream)
            for index, sample in enumerate(group_by_keys(members, handler=wds.ignore_and_continue)):
                if index >= span.stop:
                    break
                if index < span.start:
                    continue
                taken += 1
                if sample.get("jpg", b"")[:2] != b"\xff\xd8" or "cls" not in sample:
                    skips.add(1, url, f"sample {sample.get('__key__')} has no JPEG image or label")
                else:
                    yield sample
        lost = span.stop - span.start - taken
        skips.add(lost, url, "the shard ends early (truncated?)" if taken else "no readable samples")


def decode_rgb(jpg: bytes) -> np.ndarray:
    """HWC uint8 RGB. simplejpeg (libjpeg-turbo) decodes the shards' JPEGs ~1.6x faster than PIL
    here (make bench); anything else, or a damaged file, goes to PIL, which raises OSError."""
    try:
        return simplejpeg.decode_jpeg(jpg, colorspace="RGB")
    except ValueError:
        with Image.open(io.BytesIO(jpg)) as img:
            return np.array(img.convert("RGB"))  # writable: the crop becomes a tensor view of it


def fits(image: np.ndarray, size: int) -> tuple[int, int]:
    """The image's height and width, once it is known to hold a `size` crop."""
    h, w, _ = image.shape
    if h < size or w < size:
        raise ValueError(f"image is {w}x{h}, smaller than the {size} crop")
    return h, w


def _offset(room: int) -> int:
    return int(torch.randint(0, room + 1, ()).item()) if room > 0 else 0


class Augment:
    """Host side, on uint8 HWC arrays: the crop and flip. Float conversion happens on the device.

    paper: the centre square of the (short side = `short_side`) image, a random `size` crop of it
    and a random flip, as array slices of the decoded image (no resampling, no copy until the
    batch is stacked). inception: torchvision's
    RandomResizedCrop and flip. Random numbers come from torch's generator, seeded per batch."""

    def __init__(self, kind: str, size: int, short_side: int) -> None:
        self.kind, self.size, self.short_side = kind, size, short_side
        self.inception = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])

    def __call__(self, jpg: bytes) -> np.ndarray | torch.Tensor:
        image = decode_rgb(jpg)
        if self.kind == "inception":
            return np.asarray(self.inception(Image.fromarray(image)))
        h, w = fits(image, self.size)
        square = min(self.short_side, h, w)
        top = (h - square) // 2 + _offset(square - self.size)
        left = (w - square) // 2 + _offset(square - self.size)
        crop = torch.from_numpy(image[top : top + self.size, left : left + self.size])
        # torch's flip: 10 us for a 224 px crop; numpy copying a reversed view pixel by pixel: 160
        return crop.flip(1) if torch.rand(()) < 0.5 else crop


class EvalCrop:
    """Test-time views of one image. Centre: the centre `size` crop. Ten (paper 4.1): the four
    corner and the centre `size` patches of the central `short_side` square, and their
    reflections, as (10, size, size, 3); not the corners of the whole non-square image."""

    def __init__(self, size: int, short_side: int, ten: bool) -> None:
        self.size, self.short_side, self.ten = size, short_side, ten

    def __call__(self, jpg: bytes) -> np.ndarray:
        image = decode_rgb(jpg)
        h, w = fits(image, self.size)
        if not self.ten:  # the centre of the central square is the centre of the image
            top, left = (h - self.size) // 2, (w - self.size) // 2
            return image[top : top + self.size, left : left + self.size]
        side = min(self.short_side, h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = torch.from_numpy(np.ascontiguousarray(image[top : top + side, left : left + side]))
        crops = v2.functional.ten_crop(square.permute(2, 0, 1), [self.size, self.size])
        return torch.stack(crops).permute(0, 2, 3, 1).numpy()


def decode_batch(
    batch: list[dict[str, Any]],
    decode: Callable[[bytes], np.ndarray | torch.Tensor],
    skips: Skips,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and crop into one uint8 batch; an image that fails to decode is dropped (the batch
    is one smaller). Crops are written straight into the batch tensor (`out` when given): no
    stacking copy."""
    images: torch.Tensor | None = out
    labels = []
    for s in batch:
        try:
            image, label = decode(s["jpg"]), int(s["cls"])
        except (OSError, ValueError, SyntaxError) as err:  # what the decoders raise for broken files
            skips.add(1, s["__url__"], f"sample {s['__key__']} does not decode ({err})")
            continue
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if images is None:
            images = torch.empty((len(batch), *image.shape), dtype=torch.uint8)
        images[len(labels)] = image
        labels.append(label)
    if not labels:
        raise DataError(f"no image of a batch from {batch[0]['__url__']} decodes; rebuild that shard")
    assert images is not None
    return images[: len(labels)], torch.tensor(labels)


class BatchSlots:
    """Shared-memory batch buffers that loader processes fill in place, in the training process.

    A tensor a loader process returns goes through fresh shared memory, one segment per batch,
    and writing into fresh pages costs their faults (6 ms per 64-image batch here). Instead each
    loader process owns a ring of `depth` batches, made once and kept for the next epochs, and
    sends only where its batch lies; the training process copies each batch out as it arrives
    (so a batch stays valid however long it is kept) and hands the slot back through the
    process's semaphore. Measured on the bench's shards (2 processes, 2 cores): loader processes'
    CPU per image 0.56 ms -> 0.40 (a bare decode loop: 0.37-0.43), the training process's 0.04 ->
    0.05-0.09 (the copy out), images/s 3,000 -> 3,600-4,100. With depth = prefetch + 1 a loader
    process never waits: it only makes a batch the DataLoader asked for, and the DataLoader asks
    a process for one more only as it hands over one of that process's batches. Shared memory
    held: workers x depth batches (8 processes at batch 128: 770 MB), about what the DataLoader's
    own batches in flight take."""

    _kept: ClassVar[dict[tuple[int, ...], BatchSlots]] = {}  # by (workers, depth, *shape)

    def __init__(self, workers: int, depth: int, shape: tuple[int, ...]) -> None:
        self.images = torch.empty((workers, depth, *shape), dtype=torch.uint8).share_memory_()
        self.workers, self.depth, self.in_use = workers, depth, False
        self.owner = os.getpid()
        self.free: list[Any] = []

    @classmethod
    def open(cls, workers: int, depth: int, shape: tuple[int, ...]) -> BatchSlots:
        """Slots for one epoch's loader: the kept ones unless another loader has them."""
        key = (workers, depth, *shape)
        slots = cls._kept.get(key)
        if slots is None:
            slots = cls._kept[key] = cls(workers, depth, shape)
        elif slots.in_use:  # another loader is running: slots of its own, not kept
            slots = cls(workers, depth, shape)
        slots.in_use = True
        context = torch.multiprocessing.get_context()  # the DataLoader's
        slots.free = [context.Semaphore(depth) for _ in range(workers)]
        return slots

    def close(self, finished: bool) -> None:
        """After the epoch. The slots of an epoch that ended early are never handed out again:
        its loader processes may still be writing into them."""
        if finished:
            self.in_use = False
        else:
            for key, kept in list(self._kept.items()):
                if kept is self:
                    del self._kept[key]

    def fill(self, worker: int, batch: int) -> torch.Tensor:
        """In loader process `worker`: the slot for its `batch`-th batch, once it is free."""
        while not self.free[worker].acquire(timeout=5):
            if os.getppid() != self.owner:
                raise RuntimeError("the training process is gone")
        return self.images[worker, batch % self.depth]

    def take(self, filled: Filled, pin: bool) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        """In the training process: the batch copied out of its slot, and the slot handed back."""
        view = self.images[filled.worker, filled.batch % self.depth, : filled.count]
        images = torch.empty(view.shape, dtype=torch.uint8, pin_memory=pin)
        np.copyto(images.numpy(), view.numpy())  # one thread: torch's copy_ wakes the OpenMP pool
        self.free[filled.worker].release()
        labels = torch.tensor(filled.labels)
        return filled.index, images, labels.pin_memory() if pin else labels, filled.skipped


@dataclass
class Filled:
    """What a loader process sends: batch `index` (its `batch`-th) lies in its slot."""

    index: int
    worker: int
    batch: int
    count: int
    labels: list[int]  # a tensor would travel through a shared-memory segment of its own
    skipped: int
    slots_id: int

    def pin_memory(self, device: Any = None) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        """The DataLoader's pin-memory thread copies the batch straight into pinned memory."""
        return _open_slots[self.slots_id].take(self, pin=True)


_open_slots: dict[int, BatchSlots] = {}  # by id, for the pin-memory thread


class DataError(RuntimeError):
    """The data is too damaged to train on: the message names what and how to fix it."""


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


class DeviceTransform:
    """On the first tower's device: uint8 NHWC -> float NCHW, PCA lighting (train), normalise.

    paper (section 2): raw 0-255 pixels minus the training set's mean pixel, no division, the
    scale the N(0, 0.01) init was made for; the colour noise's eigenvalues are rescaled to the
    same units (x 255: ImageNet's 0.2175, 0.0188, 0.0045 become ChainerCV's 55.46, 4.794, 1.148).
    standard (torchvision): [0, 1] pixels, minus the mean, divided by the std."""

    def __init__(
        self, manifest: Manifest, device: torch.device, lighting: float, channels_last: bool, normalize: str
    ) -> None:
        stats = manifest.stats
        self.scale = 1.0 if normalize == "paper" else 1 / 255
        unit = 255.0 * self.scale  # the manifest's statistics are for [0, 1] pixels
        self.mean = torch.tensor(stats.mean, device=device).view(1, 3, 1, 1) * unit
        self.std = torch.tensor(stats.std, device=device).view(1, 3, 1, 1) if normalize == "standard" else None
        self.eigval = torch.tensor(stats.eigval, device=device) * unit
        self.eigvec = torch.tensor(stats.eigvec, device=device)
        self.device, self.lighting, self.channels_last = device, lighting, channels_last

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if self.scale != 1.0:
            x = x.mul_(self.scale)
        if train and self.lighting > 0:
            # Paper 4.1: add eigvec @ (alpha * eigval), alpha ~ N(0, 0.1), to every pixel.
            alpha = torch.randn(x.shape[0], 3, device=self.device) * self.lighting
            x = x + (alpha * self.eigval @ self.eigvec.T).view(-1, 3, 1, 1)
        x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
