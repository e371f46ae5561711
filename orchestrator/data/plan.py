"""Which rank reads which samples. What each rank sees is a pure function of (seed, epoch, rank,
world size): shards are dealt to ranks per epoch and each loader process reads exactly its own
batches' samples, so every rank runs the same number of batches (DDP never waits on a rank that
ran dry) and a resumed run can skip exactly the batches a checkpoint had consumed."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from shards.manifest import ShardInfo


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
