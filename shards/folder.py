"""An ImageFolder tree: class = subfolder name, index = sorted order (as torchvision)."""

from __future__ import annotations

import os

from shards.errors import ShardsError
from shards.sources import WHOLE_FILE, ClassEntry, Sample, Source, key_for, unique_keys


def _classes(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise ShardsError(f"folder {root} does not exist; pass a folder with one subfolder per class")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ShardsError(f"folder {root} has no class subfolders; lay it out as <root>/<class>/<image>")
    return names


def _index(root: str, label_of: dict[str, int]) -> list[Sample]:
    samples = []
    for wnid in sorted(label_of):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, wnid))):
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                samples.append(Sample(key_for(f"{wnid}_{name}"), rel, label_of[wnid], path, 0, WHOLE_FILE))
    return unique_keys(samples)


def folder_source(train: str | None, val: str | None) -> Source:
    names = _classes(train or val)
    if train and val and _classes(val) != names:
        raise ShardsError(f"val folder {val} has different class subfolders from train folder {train}; make them match")
    label_of = {n: i for i, n in enumerate(names)}
    splits = {}
    if train:
        splits["train"] = _index(train, label_of)
    if val:
        splits["val"] = _index(val, label_of)
    return Source([ClassEntry(n, n) for n in names], splits, {"kind": "folder"})
