"""Shard streaming: equal batches on every rank, a pure function of (seed, epoch, rank, world),
exact skipping for resume, and val read once across ranks."""

from __future__ import annotations

import itertools
import os
import random
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from orchestrator.data.augment import Augment, EvalCrop, decode_rgb
from orchestrator.data.device_transform import DeviceTransform
from orchestrator.data.plan import Reading, deal, steps_per_epoch, worker_share
from orchestrator.data.streams import PREFETCH, EvalStream, TrainStream
from orchestrator.data.tar_members import tar_members
from shards.manifest import ShardInfo, read_manifest


def keys_of(stream: TrainStream, workers: int = 0) -> list[list[str]]:
    """The sample keys of every batch, by patching decode to return each sample's number in
    the shards as its label instead of decoding pixels."""
    import orchestrator.data.streams as data

    names = []
    for shard in stream.reading.shards:
        with open(os.path.join(stream.root, shard.name), "rb") as f:
            names += [m["fname"].split(".")[0] for m in tar_members(shard.name, f) if m["fname"].endswith(".cls")]
    number = {name: i for i, name in enumerate(names)}
    original = data.decode_batch
    data.decode_batch = lambda batch, decode, skips, out=None: (
        None,
        torch.tensor([number[s["__key__"]] for s in batch]),
    )
    try:
        return [[names[i] for i in labels.tolist()] for _, labels, _ in stream.batches(workers, False)]
    finally:
        data.decode_batch = original


def stream(manifest, url, **kw) -> TrainStream:
    args = {
        "seed": 0,
        "epoch": 0,
        "rank": 0,
        "world": 1,
        "batch_size": 8,
        "shuffle_buffer": 30,
        "augment": Augment("paper", 67, 80),
    }
    args.update(kw)
    return TrainStream(manifest, url, {}, **args)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 9])
def test_every_rank_gets_the_same_number_of_samples_to_within_one(world):
    rng = random.Random(world)
    shards = [ShardInfo(f"s{i}.tar", rng.randint(1, 100), 0, "") for i in range(7)]
    readings = deal(shards, world, random.Random(0))
    assert len(readings) == world
    assert sum(r.samples for r in readings) == sum(s.samples for s in shards)
    assert max(r.samples for r in readings) - min(r.samples for r in readings) <= 1


def test_a_reading_splits_into_consecutive_spans():
    shards = [ShardInfo("a.tar", 10, 0, ""), ShardInfo("b.tar", 5, 0, "")]
    parts = Reading.whole(shards).split(4)
    assert [p.samples for p in parts] == [3, 4, 4, 4]
    assert [(s.shard.name, s.start, s.stop) for s in parts[2].spans] == [("a.tar", 7, 10), ("b.tar", 0, 1)]


IMAGENET_TRAIN = 1_281_167


def imagenet_shaped_shards(per_shard: int = 1000) -> list[ShardInfo]:
    """ILSVRC2012's train split as `python -m shards imagenet` writes it: full shards of
    `per_shard` and a last, partial one."""
    full, rest = divmod(IMAGENET_TRAIN, per_shard)
    sizes = [per_shard] * full + ([rest] if rest else [])
    return [ShardInfo(f"train-{i:06d}.tar", n, 0, "") for i, n in enumerate(sizes)]


def test_an_epoch_draws_every_sample_at_most_once_at_any_scale():
    """World sizes 1-64, loader processes 1-8, batch 128, ImageNet's real train split: no
    sample is read by two processes, every process reads exactly its batches' samples, and at
    most world x workers x batch samples are left out of the epoch."""
    shards, batch = imagenet_shaped_shards(), 128
    for world in range(1, 65):
        readings = deal(shards, world, random.Random(world))
        steps = steps_per_epoch(shards, world, batch)
        for workers in range(1, 9):
            spans: dict[str, list[tuple[int, int]]] = {}
            for reading in readings:
                for worker in range(workers):
                    share = worker_share(reading, steps, batch, worker, workers)
                    assert share.samples == len(range(worker, steps, workers)) * batch
                    for span in share.spans:
                        spans.setdefault(span.shard.name, []).append((span.start, span.stop))
            drawn = 0
            for name, ranges in spans.items():
                ranges.sort()
                for (_, stop), (start, _) in itertools.pairwise(ranges):
                    assert stop <= start, f"world {world}, {workers} workers: {name} is read twice"
                drawn += sum(stop - start for start, stop in ranges)
            assert IMAGENET_TRAIN - drawn <= world * workers * batch, (world, workers)


@pytest.mark.parametrize(("world", "workers"), [(3, 2), (2, 3)])
def test_a_real_epoch_reads_no_sample_twice(tiny_shards, world, workers):
    manifest = read_manifest(tiny_shards)
    streams = [stream(manifest, tiny_shards, rank=rank, world=world) for rank in range(world)]
    keys = [key for s in streams for batch in keys_of(s, workers) for key in batch]
    assert len(keys) == len(set(keys))
    assert manifest.samples("train") - len(keys) <= world * workers * 8


def test_uneven_ranks_all_yield_the_same_batch_count(tiny_shards):
    manifest = read_manifest(tiny_shards)
    counts = [len(keys_of(stream(manifest, tiny_shards, rank=r, world=3))) for r in range(3)]
    assert len(set(counts)) == 1 and counts[0] > 0


def test_keys_are_a_pure_function_of_seed_epoch_rank_world(tiny_shards):
    manifest = read_manifest(tiny_shards)
    a = keys_of(stream(manifest, tiny_shards, rank=1, world=2))
    assert a == keys_of(stream(manifest, tiny_shards, rank=1, world=2))
    assert a != keys_of(stream(manifest, tiny_shards, rank=1, world=2, epoch=1))
    assert a != keys_of(stream(manifest, tiny_shards, rank=1, world=2, seed=1))
    other = keys_of(stream(manifest, tiny_shards, rank=0, world=2))
    assert not {k for b in a for k in b} & {k for b in other for k in b}  # ranks never overlap
    # The same with loader processes: batches come back in the same order.
    assert keys_of(stream(manifest, tiny_shards, world=2), workers=2) == keys_of(
        stream(manifest, tiny_shards, world=2), workers=2
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_resumes_exactly_where_the_checkpoint_was(tiny_shards, workers):
    manifest = read_manifest(tiny_shards)
    full = keys_of(stream(manifest, tiny_shards), workers)
    resumed = keys_of(stream(manifest, tiny_shards, skip=3), workers)
    assert resumed == full[3:]


def test_augmentation_of_a_batch_does_not_depend_on_skipping(tiny_shards):
    manifest = read_manifest(tiny_shards)
    full = [x for x, _, _ in stream(manifest, tiny_shards).batches(0, False)]
    resumed = [x for x, _, _ in stream(manifest, tiny_shards, skip=2).batches(0, False)]
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed, strict=True))
    assert full[0].dtype == torch.uint8 and full[0].shape == (8, 67, 67, 3)


def test_loader_processes_hand_over_the_pixels_of_one_process_and_batches_stay_intact(tiny_shards):
    """Loader processes fill shared batch slots that they reuse (BatchSlots); every batch a
    consumer keeps must still hold its own pixels after the slots were refilled, in later epochs
    too, and after an epoch that was left half way."""
    manifest = read_manifest(tiny_shards)
    one = {}  # each process's batches, made in this process without slots
    for worker in range(2):
        with mock.patch(
            "orchestrator.data.streams.get_worker_info", return_value=SimpleNamespace(id=worker, num_workers=2)
        ):
            one.update({index: (x, y) for index, x, y, _ in stream(manifest, tiny_shards)})
    one = [one[i] for i in sorted(one)]
    assert len(one) > 2 * (PREFETCH + 1)  # more batches per process than its slots: slots are refilled
    for _ in range(2):
        kept = [(x, y) for x, y, _ in stream(manifest, tiny_shards).batches(2, False)]
        assert len(kept) == len(one)
        assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(one, kept, strict=True))
        next(iter(stream(manifest, tiny_shards).batches(2, False)))  # an epoch left after one batch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_are_copied_out_of_their_slots_by_the_pin_thread(tiny_shards):
    manifest = read_manifest(tiny_shards)
    plain = [(x, y) for x, y, _ in stream(manifest, tiny_shards).batches(2, False)]
    pinned = [(x, y) for x, y, _ in stream(manifest, tiny_shards).batches(2, True)]
    assert all(x.is_pinned() and y.is_pinned() for x, y in pinned)
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(plain, pinned, strict=True))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_val_is_read_once_across_ranks(tiny_shards, world):
    manifest = read_manifest(tiny_shards)
    labels = []
    for rank in range(world):
        val = EvalStream(manifest, tiny_shards, {}, rank=rank, world=world, batch_size=7, size=67)
        labels += [y for _, ys in val for y in ys.tolist()]
    assert len(labels) == manifest.samples("val")


def test_ten_crop_gives_ten_views(tiny_shards):
    manifest = read_manifest(tiny_shards)
    images, _ = next(iter(EvalStream(manifest, tiny_shards, {}, rank=0, world=1, batch_size=4, size=67, ten_crop=True)))
    assert images.shape == (4, 10, 67, 67, 3)
    assert torch.equal(images[:, 5], images[:, 1].flip(2))  # mirrored image: its top-left is the top-right


def test_ten_crop_takes_its_patches_from_the_central_square():
    """A 96x160 image (short side 96) whose margins outside the central 96x96 square are red:
    none of the ten 64-px patches may reach into them, and the corners are the square's."""
    import io

    from PIL import Image

    image = torch.zeros(96, 160, 3, dtype=torch.uint8)
    image[:, :32] = image[:, 128:] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # the margins
    image[:, 32:128] = (torch.arange(96, dtype=torch.uint8) * 2 + 40)[None, :, None]  # a grey ramp, left to right
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=95)
    crops = torch.from_numpy(EvalCrop(64, 96, ten=True)(buffer.getvalue())).float()
    assert crops.shape == (10, 64, 64, 3)
    redness = (crops[..., 0] - crops[..., 1]).mean(dim=(1, 2))
    assert redness.max() < 10, "a patch reaches outside the central square"
    grey = crops[:, 32, :, 1]  # one row of each patch: the ramp says where it was cut
    # the top-left patch starts at the square's left edge, the top-right one ends at its right edge
    assert grey[0, 0] < 50 and grey[1, -1] > 210
    # the reflections: the mirrored square's top-left patch is the top-right one, mirrored
    torch.testing.assert_close(crops[5:], crops[[1, 0, 3, 2, 4]].flip(2))


def test_paper_crops_are_patches_of_the_central_square_mirrored_half_the_time():
    """Augment("paper"): a `size` patch of the central square, as it is or mirrored, never
    resampled. The image: a ramp along x in green, along y in blue, red margins outside the square."""
    import io

    from PIL import Image

    image = torch.zeros(96, 160, 3, dtype=torch.uint8)
    image[:, :32] = image[:, 128:] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    image[:, 32:128, 1] = (torch.arange(96, dtype=torch.uint8) * 2 + 40)[None, :]
    image[:, 32:128, 2] = (torch.arange(96, dtype=torch.uint8) * 2 + 40)[:, None]
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")  # lossless: pixels compare exactly
    augment = Augment("paper", 64, 96)
    decoded = torch.from_numpy(decode_rgb(buffer.getvalue()))
    torch.manual_seed(0)
    mirrored = 0
    for _ in range(40):
        crop = torch.as_tensor(augment(buffer.getvalue()))
        assert crop.shape == (64, 64, 3) and crop[..., 0].max() == 0  # inside the square
        top, left = int(crop[0, 0, 2] - 40) // 2, int(min(crop[0, 0, 1], crop[0, -1, 1]) - 40) // 2 + 32
        patch = decoded[top : top + 64, left : left + 64]
        flipped = bool(crop[0, 0, 1] > crop[0, -1, 1])
        assert torch.equal(crop, patch.flip(1) if flipped else patch)
        mirrored += flipped
    assert 10 < mirrored < 30


def test_device_transform_normalises_with_the_manifest_statistics(tiny_shards):
    manifest = read_manifest(tiny_shards)
    images = next(stream(manifest, tiny_shards).batches(0, False))[0]
    x = DeviceTransform(manifest, torch.device("cpu"), 0.0, True, "standard")(images, train=True)
    assert x.shape == (8, 3, 67, 67) and x.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(manifest.stats.mean).view(1, 3, 1, 1)
    std = torch.tensor(manifest.stats.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x * std + mean, images.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)
    lit = DeviceTransform(manifest, torch.device("cpu"), 0.1, False, "standard")(images, train=True)
    shift = (lit - x) * std  # PCA lighting: one RGB offset per image, the same at every pixel
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-5)
    assert shift.abs().max() > 0


def test_a_rank_whose_shards_are_all_gone_fails_instead_of_hanging_ddp(tiny_shards, tmp_path):
    import shutil

    from orchestrator.data.bad_samples import DataError

    root = tmp_path / "shards"
    shutil.copytree(tiny_shards, root)
    manifest = read_manifest(str(root))
    lonely = stream(manifest, str(root), rank=0, world=4)  # 4 shards, 4 ranks: one shard each
    (root / lonely.reading.shards[0].name).unlink()
    with pytest.raises(DataError, match="no readable sample"):
        list(lonely.batches(0, False))


def test_starting_a_loader_leaves_the_global_generator_alone(tiny_shards):
    """Dropout and colour noise draw from the global generator; a resumed run reseeds it at the
    checkpoint, so starting the epoch's loader must not consume from it."""
    manifest = read_manifest(tiny_shards)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    next(iter(stream(manifest, tiny_shards).batches(2, False)))
    assert torch.equal(torch.rand(3), expected)


def test_paper_normalisation_subtracts_the_mean_from_raw_pixels(tiny_shards):
    """Section 2: the mean pixel of the training set is subtracted from raw 0-255 RGB values,
    with no division; the colour noise is in the same units (the [0, 1] eigenvalues x 255)."""
    manifest = read_manifest(tiny_shards)
    images = next(stream(manifest, tiny_shards).batches(0, False))[0]
    x = DeviceTransform(manifest, torch.device("cpu"), 0.0, False, "paper")(images, train=True)
    mean = torch.tensor(manifest.stats.mean).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(x + mean, images.permute(0, 3, 1, 2).float(), atol=1e-4, rtol=0)
    torch.manual_seed(0)
    lit = DeviceTransform(manifest, torch.device("cpu"), 0.1, False, "paper")(images, train=True)
    torch.manual_seed(0)
    unit = DeviceTransform(manifest, torch.device("cpu"), 0.1, False, "standard")(images, train=True)
    std = torch.tensor(manifest.stats.std).view(1, 3, 1, 1)
    shift_paper = (lit - x)[:, :, 0, 0]
    shift_unit = ((unit * std + mean / 255) - images.permute(0, 3, 1, 2).float() / 255)[:, :, 0, 0]
    torch.testing.assert_close(shift_paper, 255 * shift_unit, atol=1e-3, rtol=1e-3)  # the same noise, in 0-255
