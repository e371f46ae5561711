"""The three official ILSVRC2012 files, indexed by reading tar headers only.

ILSVRC2012_img_train.tar holds one n########.tar per class; ILSVRC2012_img_val.tar is flat;
ILSVRC2012_devkit_t12.tar.gz has data/meta.mat (synsets) and the validation ground truth.
Class index = position of the wnid in sorted order; the ILSVRC2012_ID only maps val labels."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import scipy.io

from shards.errors import ShardsError
from shards.sources import ClassEntry, Sample, Source, key_for, unique_keys

META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


def _open_tar(path: str, what: str) -> tarfile.TarFile:
    if not os.path.isfile(path):
        raise ShardsError(f"{what} {path} does not exist; pass the path of the downloaded file")
    try:
        return tarfile.open(path, "r:*")
    except tarfile.ReadError:
        raise ShardsError(f"{what} {path} is not a tar archive; pass the original ILSVRC2012 file") from None


def read_devkit(path: str) -> tuple[dict[int, ClassEntry], list[int] | None]:
    """Leaf synsets by ILSVRC2012_ID, and the val ground truth (IDs in file-name order)."""
    with _open_tar(path, "devkit") as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        if META not in members:
            raise ShardsError(f"devkit {path} has no {META}; pass ILSVRC2012_devkit_t12.tar.gz")
        synsets = scipy.io.loadmat(io.BytesIO(tar.extractfile(members[META]).read()), squeeze_me=True)["synsets"]
        truth = None
        if GROUND_TRUTH in members:
            text = tar.extractfile(members[GROUND_TRUTH]).read().decode()
            truth = [int(line) for line in text.split()]
    leaves = {}
    for s in np.atleast_1d(synsets):
        if int(s["num_children"]) == 0:
            leaves[int(s["ILSVRC2012_ID"])] = ClassEntry(str(s["WNID"]), str(s["words"]))
    if not leaves:
        raise ShardsError(f"devkit {path} lists no leaf synsets in {META}; it is not an ILSVRC devkit")
    return leaves, truth


def _inner_images(outer: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> list[tarfile.TarInfo]:
    """Headers of one per-class tar, read in place inside the outer archive."""
    try:
        with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
            return [m for m in inner if m.isfile()]
    except tarfile.ReadError:
        raise ShardsError(f"{member.name} inside {path} is not a tar; the train archive is damaged") from None


def index_train(path: str, label_of: dict[str, int]) -> list[Sample]:
    """Every image in the train tar's per-class tars, located by absolute byte offset."""
    samples = []
    found = set()
    with _open_tar(path, "train archive") as outer:
        for member in outer:
            if not member.isfile():
                continue
            wnid = member.name.rsplit("/", 1)[-1].removesuffix(".tar")
            if wnid not in label_of:
                raise ShardsError(
                    f"train archive class {wnid} is not a leaf synset of the devkit; "
                    "pass the devkit that belongs to this train archive"
                )
            found.add(wnid)
            for image in _inner_images(outer, member, path):
                samples.append(
                    Sample(
                        key_for(image.name),
                        image.name.rsplit("/", 1)[-1],
                        label_of[wnid],
                        path,
                        member.offset_data + image.offset_data,
                        image.size,
                    )
                )
    missing = sorted(set(label_of) - found)
    if missing:
        raise ShardsError(
            f"train archive lacks {len(missing)} devkit classes (first: {missing[0]}); "
            "pass the complete ILSVRC2012_img_train.tar"
        )
    return unique_keys(samples)


def index_val(
    path: str, truth: list[int] | None, leaves: dict[int, ClassEntry], label_of: dict[str, int]
) -> list[Sample]:
    if truth is None:
        raise ShardsError(f"the devkit has no {GROUND_TRUTH}, so val images cannot be labelled")
    with _open_tar(path, "val archive") as tar:
        images = sorted((m for m in tar if m.isfile()), key=lambda m: m.name.rsplit("/", 1)[-1])
    if len(images) != len(truth):
        raise ShardsError(
            f"val archive has {len(images)} images but the devkit's ground truth has {len(truth)} labels; "
            "pass the matching val archive and devkit"
        )
    samples = []
    for image, ilsvrc_id in zip(images, truth, strict=True):
        if ilsvrc_id not in leaves:
            raise ShardsError(f"val ground truth names ILSVRC2012_ID {ilsvrc_id}, not a leaf synset of the devkit")
        samples.append(
            Sample(
                key_for(image.name),
                image.name.rsplit("/", 1)[-1],
                label_of[leaves[ilsvrc_id].wnid],
                path,
                image.offset_data,
                image.size,
            )
        )
    return unique_keys(samples)


def ilsvrc_source(train_tar: str | None, val_tar: str | None, devkit: str) -> Source:
    leaves, truth = read_devkit(devkit)
    classes = sorted(leaves.values(), key=lambda c: c.wnid)
    label_of = {c.wnid: i for i, c in enumerate(classes)}
    splits = {}
    if train_tar:
        splits["train"] = index_train(train_tar, label_of)
    if val_tar:
        splits["val"] = index_val(val_tar, truth, leaves, label_of)
    names = {"train": train_tar, "val": val_tar, "devkit": devkit}
    return Source(
        classes,
        splits,
        {"kind": "imagenet", **{k: os.path.basename(v) for k, v in names.items() if v}},
    )
