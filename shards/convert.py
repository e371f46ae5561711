"""Source images -> shuffled WebDataset shards + manifest.json, in parallel, resumable.

Every split's samples are shuffled once (seeded) and cut into shards, so each shard's content
is a pure function of (source, seed, shard size). A shard is written to a staging file and
published whole; a small record under .progress/ then says it is done. Re-running the same
command verifies those shards (size and sha256) and skips them. manifest.json is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context

import webdataset as wds
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shards.destination import Destination
from shards.image import PixelMoments, to_jpeg
from shards.manifest import MANIFEST_NAME, ClassInfo, Manifest, ShardInfo, Skipped, Statistics, sha256_of
from shards.sources import Sample, Source

PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class Settings:
    resize: int = 256
    quality: int = 90
    shard_size: int = 1000
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    stats_images: int = 2000


@dataclass(frozen=True)
class ShardPlan:
    split: str
    name: str
    samples: list[Sample]

    def fingerprint(self, settings: Settings) -> str:
        """Changes when the shard's content would: other samples, resize or quality."""
        h = hashlib.sha256(f"{settings.resize}:{settings.quality}".encode())
        for s in self.samples:
            h.update(f"{s.key}:{s.label};".encode())
        return h.hexdigest()


@dataclass
class ShardResult:
    split: str
    info: ShardInfo
    skipped: list[Skipped]


@dataclass
class Summary:
    images: int
    shards: int
    reused: int
    bytes: int
    seconds: float
    skipped: int
    converted: int  # images decoded and encoded by this run (reused shards excluded)

    def line(self) -> str:
        rate = self.converted / self.seconds if self.seconds else 0.0
        return (
            f"{self.images:,} images in {self.shards} shards ({self.reused} already done), "
            f"{self.bytes / 1e6:,.1f} MB, {rate:,.0f} images/s, {self.skipped} skipped"
        )


def plan_shards(split: str, samples: list[Sample], shard_size: int, seed: int) -> list[ShardPlan]:
    order = list(samples)
    random.Random(f"{seed}:{split}").shuffle(order)
    return [
        ShardPlan(split, f"{split}-{i // shard_size:06d}.tar", order[i : i + shard_size])
        for i in range(0, len(order), shard_size)
    ]


def _record_name(shard: str) -> str:
    return f"{PROGRESS_DIR}/{shard}.json"


def write_shard(plan: ShardPlan, dest: Destination, settings: Settings, wnids: list[str]) -> ShardResult:
    """Convert one shard's images and publish it; unreadable images are skipped and listed."""
    skipped = []
    staged = dest.staging_file(plan.name)
    written = 0
    try:
        with open(staged, "wb") as stream:
            # A fixed integer mtime: plain ustar headers (no pax record per member, so readers
            # parse half the headers) and byte-identical shards from identical input.
            writer = wds.TarWriter(stream, mtime=0)
            for s in plan.samples:
                try:
                    jpg, width, height = to_jpeg(s.read(), settings.resize, settings.quality)
                except Exception as err:  # any undecodable image: PIL raises many types
                    skipped.append(Skipped(plan.split, s.source, f"{type(err).__name__}: {err}"))
                    continue
                meta = {
                    "wnid": wnids[s.label],
                    "source": s.source,
                    "width": width,
                    "height": height,
                }
                writer.write(
                    {
                        "__key__": s.key,
                        "jpg": jpg,
                        "cls": str(s.label).encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )
                written += 1
            writer.close()
        with open(staged, "rb") as f:
            digest = sha256_of(f)
        size = os.path.getsize(staged)
        dest.publish(staged, plan.name)
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    info = ShardInfo(plan.name, written, size, digest)
    record = {
        "fingerprint": plan.fingerprint(settings),
        "shard": asdict(info),
        "skipped": [asdict(s) for s in skipped],
    }
    dest.write_text(_record_name(plan.name), json.dumps(record))
    return ShardResult(plan.split, info, skipped)


def reuse_shard(plan: ShardPlan, dest: Destination, settings: Settings) -> ShardResult | None:
    """The shard's earlier result if it is complete and intact, else None (write it again)."""
    text = dest.read_text(_record_name(plan.name))
    if text is None:
        return None
    record = json.loads(text)
    info = ShardInfo(**record["shard"])
    if record["fingerprint"] != plan.fingerprint(settings) or dest.size(plan.name) != info.bytes:
        return None
    with dest.open(plan.name) as f:
        if sha256_of(f) != info.sha256:
            return None
    return ShardResult(plan.split, info, [Skipped(**s) for s in record["skipped"]])


def process_shard(plan: ShardPlan, dest: Destination, settings: Settings, wnids: list[str]) -> tuple[ShardResult, bool]:
    reused = reuse_shard(plan, dest, settings)
    if reused is not None:
        return reused, True
    return write_shard(plan, dest, settings, wnids), False


def measure(samples: list[Sample]) -> PixelMoments:
    moments = PixelMoments()
    for s in samples:
        try:
            moments.add_image(s.read())
        except Exception:  # unreadable images are reported by the shard that holds them
            continue
    return moments


def _executor(workers: int, dest: Destination) -> Executor:
    if workers <= 1 or dest.in_process_only:
        return ThreadPoolExecutor(max_workers=1)
    # spawn: workers must not inherit open sockets or event loops of s3fs/gcsfs from the parent.
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TimeRemainingColumn(),
    )


def _stats_sample(source: Source, settings: Settings) -> list[Sample]:
    split = "train" if "train" in source.splits else next(iter(source.splits))
    pool = source.splits[split]
    rng = random.Random(f"{settings.seed}:stats")
    return rng.sample(pool, min(settings.stats_images, len(pool)))


def convert(source: Source, dest: Destination, settings: Settings) -> tuple[Manifest, Summary]:
    dest.ensure_writable()
    previous = dest.read_text(MANIFEST_NAME)
    # A manifest must never name a shard that is about to be rewritten: it goes first, returns last.
    dest.remove(MANIFEST_NAME)
    wnids = [c.wnid for c in source.classes]
    plans = [
        p
        for split, samples in source.splits.items()
        for p in plan_shards(split, samples, settings.shard_size, settings.seed)
    ]
    total = sum(len(p.samples) for p in plans)
    results: dict[str, ShardResult] = {}
    reused = converted = 0
    start = time.perf_counter()
    stats_sample = _stats_sample(source, settings)
    workers = max(1, settings.workers)
    pool = _executor(workers, dest)
    try:
        with _progress() as bar:
            task = bar.add_task("converting", total=total, rate="-")
            chunk = max(1, len(stats_sample) // workers + 1)
            stats_futures = [
                pool.submit(measure, stats_sample[i : i + chunk]) for i in range(0, len(stats_sample), chunk)
            ]
            futures = [pool.submit(process_shard, p, dest, settings, wnids) for p in plans]
            done = 0
            for fut in as_completed(futures):
                result, was_reused = fut.result()
                results[result.info.name] = result
                reused += was_reused
                done += result.info.samples + len(result.skipped)
                converted += 0 if was_reused else result.info.samples
                bar.update(task, completed=done, rate=f"{converted / (time.perf_counter() - start):,.0f}")
            moments = PixelMoments()
            for fut in stats_futures:
                moments.merge(fut.result())
    finally:
        # On an interrupt or error, queued shards are dropped; finished ones stay for a re-run.
        pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - start

    splits: dict[str, list[ShardInfo]] = {}
    for p in plans:
        splits.setdefault(p.split, []).append(results[p.name].info)
    classes = [ClassInfo(i, c.wnid, c.words) for i, c in enumerate(source.classes)]
    skipped = [s for p in plans for s in results[p.name].skipped]
    stats = Statistics(**moments.finish()) if moments.pixels else None
    if previous:
        old = Manifest.from_json(previous)
        if old.classes == classes:  # keep splits converted earlier into the same place
            for split, shards in old.splits.items():
                splits.setdefault(split, shards)
            skipped += [s for s in old.skipped if s.split not in source.splits]
            stats = stats if "train" in source.splits or old.stats is None else old.stats
    manifest = Manifest(
        classes=classes,
        splits=splits,
        stats=stats,
        settings={**asdict(settings), "source": source.description},
        skipped=skipped,
    )
    dest.write_text(MANIFEST_NAME, manifest.to_json())
    written = [results[p.name].info for p in plans]
    summary = Summary(
        images=sum(s.samples for s in written),
        shards=len(written),
        reused=reused,
        bytes=sum(s.bytes for s in written),
        seconds=seconds,
        skipped=sum(len(results[p.name].skipped) for p in plans),
        converted=converted,
    )
    return manifest, summary
