"""A small ImageNet-shaped dataset from real photographs that scikit-image ships (no network).

Each class is one photograph; its samples are random crops of it (varied scale, aspect, flip
and brightness), so a small AlexNet must learn each photo's colours and textures. The result
is written as the three ILSVRC2012 files, with the real archives' quirks (a CMYK JPEG, a PNG
under a .JPEG name, grayscale photos, synset IDs not in wnid order, a non-leaf synset), and then
converted through exactly the path real ImageNet takes."""

from __future__ import annotations

import io
import os
import random
import tarfile

import numpy as np
import scipy.io
import skimage.data
import skimage.io
from PIL import Image

# wnid-like name -> (loader, words). Two are grayscale on purpose.
PHOTOS = {
    "demo_astronaut": ("astronaut", "astronaut, Eileen Collins"),
    "demo_brick": ("brick", "brick wall (grayscale)"),
    "demo_camera": ("camera", "cameraman (grayscale)"),
    "demo_cat": ("chelsea", "tabby cat, Chelsea"),
    "demo_coffee": ("coffee", "cup of coffee"),
    "demo_hubble": ("hubble_deep_field", "Hubble deep field"),
    "demo_ihc": ("immunohistochemistry", "immunohistochemistry stain"),
    "demo_motorcycle": ("motorcycle_left.png", "motorcycle"),
    "demo_retina": ("retina", "retina fundus photograph"),
    "demo_rocket": ("rocket", "rocket on the launch pad"),
}
CROP_SIDE = 160  # the crops are stored larger than the demo's 128 px shards, as ImageNet is


def load_photo(name: str) -> Image.Image:
    if name.endswith(".png"):
        array = skimage.io.imread(os.path.join(os.path.dirname(skimage.data.__file__), name))
    else:
        array = getattr(skimage.data, name)()
    return Image.fromarray(array)


def random_crop(photo: Image.Image, rng: random.Random) -> Image.Image:
    width, height = photo.size
    area = width * height * rng.uniform(0.1, 0.6)
    aspect = rng.uniform(3 / 4, 4 / 3)
    w = min(width, round((area * aspect) ** 0.5))
    h = min(height, round((area / aspect) ** 0.5))
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    crop = photo.crop((x, y, x + w, y + h))
    scale = CROP_SIDE / min(crop.size)
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.8, 1.2)
    return crop.point(lambda v: min(255, round(v * gain)))


def encode(img: Image.Image, kind: str = "JPEG") -> bytes:
    """JPEG, a CMYK JPEG, or a PNG (stored under a .JPEG name, as one ImageNet file is)."""
    out = io.BytesIO()
    if kind == "PNG":
        img.save(out, format="PNG")
    else:
        (img.convert("CMYK") if kind == "CMYK" else img).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_meta(synsets: list[tuple[int, str, str, int]]) -> bytes:
    """meta.mat as the devkit has it: a struct array `synsets`, leaves have num_children 0."""
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    table = np.zeros((len(synsets), 1), dtype=[(f, object) for f in fields])
    for row, (ilsvrc_id, wnid, words, children) in enumerate(synsets):
        table[row, 0] = (ilsvrc_id, wnid, words, words, children, np.zeros((1, 0)), 0, 0)
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": table})
    return out.getvalue()


def build_archives(
    folder: str, train_per_class: int = 320, val_per_class: int = 50, seed: int = 0
) -> tuple[str, str, str]:
    """Write ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz."""
    rng = random.Random(seed)
    wnids = sorted(PHOTOS)
    ids = list(range(1, len(wnids) + 1))
    rng.shuffle(ids)  # real devkit IDs are not in sorted-wnid order either
    id_of = dict(zip(wnids, ids, strict=True))
    train_path = os.path.join(folder, "ILSVRC2012_img_train.tar")
    val_path = os.path.join(folder, "ILSVRC2012_img_val.tar")
    devkit_path = os.path.join(folder, "ILSVRC2012_devkit_t12.tar.gz")
    val_images: list[tuple[int, bytes]] = []
    with tarfile.open(train_path, "w") as train:
        for wnid in wnids:
            photo = load_photo(PHOTOS[wnid][0])
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(train_per_class):
                    kind = {0: "CMYK", 1: "PNG"}.get(i, "JPEG") if wnid == "demo_cat" else "JPEG"
                    _add(inner, f"{wnid}_{i}.JPEG", encode(random_crop(photo, rng), kind))
            _add(train, f"{wnid}.tar", inner_bytes.getvalue())
            val_images += [(id_of[wnid], encode(random_crop(photo, rng))) for _ in range(val_per_class)]
    rng.shuffle(val_images)
    with tarfile.open(val_path, "w") as val:
        for n, (_, data) in enumerate(val_images, 1):
            _add(val, f"ILSVRC2012_val_{n:08d}.JPEG", data)
    synsets = [(id_of[w], w, PHOTOS[w][1], 0) for w in wnids]
    synsets.append((len(wnids) + 1, "demo_root", "all demo photographs", len(wnids)))
    truth = "".join(f"{i}\n" for i, _ in val_images).encode()
    with tarfile.open(devkit_path, "w:gz") as devkit:
        _add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", write_meta(synsets))
        _add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
    return train_path, val_path, devkit_path
