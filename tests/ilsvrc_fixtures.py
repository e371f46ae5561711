"""Tiny ILSVRC2012-format archives, made independently of shards/ so tests check it for real."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field

import numpy as np
import scipy.io
from PIL import Image

# Leaf synsets, deliberately with ILSVRC2012_IDs NOT in sorted-wnid order.
LEAVES = {"n01440764": 3, "n01443537": 1, "n02102040": 4, "n09999999": 2}
WORDS = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n02102040": "springer",
    "n09999999": "test",
}
COLOURS = {
    "n01440764": (200, 30, 30),
    "n01443537": (30, 200, 30),
    "n02102040": (30, 30, 200),
    "n09999999": (200, 200, 30),
}


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def photo(wnid: str, size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, COLOURS[wnid])


@dataclass
class Archives:
    train: str
    val: str
    devkit: str
    train_sources: dict[str, str] = field(default_factory=dict)  # file name -> wnid
    val_sources: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def make_archives(folder, per_class: int = 5, val_per_class: int = 3, broken: bool = False) -> Archives:
    """Train tar of per-class tars with a CMYK JPEG, a PNG named .JPEG and a grayscale image;
    a val tar; a devkit whose meta.mat also holds non-leaf synsets."""
    a = Archives(
        str(folder / "ILSVRC2012_img_train.tar"),
        str(folder / "ILSVRC2012_img_val.tar"),
        str(folder / "ILSVRC2012_devkit_t12.tar.gz"),
    )
    with tarfile.open(a.train, "w") as train:
        for c, wnid in enumerate(sorted(LEAVES)):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(per_class):
                    size = (300 + 37 * i + c, 200 + 11 * c) if i % 2 else (180 + c, 400 + 13 * i)
                    img = photo(wnid, size)
                    name = f"{wnid}_{i}.JPEG"
                    if c == 0 and i == 0:
                        data = encode(img.convert("CMYK"))
                    elif c == 0 and i == 1:
                        data = encode(img, "PNG")  # a PNG under a .JPEG name
                    elif c == 1 and i == 0:
                        data = encode(img.convert("L"))
                    elif broken and c == 2 and i == 0:
                        data = b"this is not an image"
                    else:
                        data = encode(img)
                    add(t, name, data)
                    a.train_sources[name] = wnid
                    a.sizes[name] = size
            add(train, f"{wnid}.tar", inner.getvalue())
    truth = []
    with tarfile.open(a.val, "w") as val:
        order = [w for _ in range(val_per_class) for w in sorted(LEAVES, reverse=True)]
        for n, wnid in enumerate(order, 1):
            name = f"ILSVRC2012_val_{n:08d}.JPEG"
            add(val, name, encode(photo(wnid, (250, 190))))
            truth.append(LEAVES[wnid])
            a.val_sources[name] = wnid
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children"]
    rows = [(i, w, WORDS[w], "", 0, np.zeros((1, 0))) for w, i in LEAVES.items()]
    rows += [
        (5, "n00001740", "entity", "", 3, np.array([[1, 2, 3]])),
        (6, "n00002000", "fish", "", 2, np.array([[1, 3]])),
    ]
    table = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        table[r, 0] = row
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": table})
    with tarfile.open(a.devkit, "w:gz") as devkit:
        add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(
            devkit,
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "".join(f"{t}\n" for t in truth).encode(),
        )
    return a
