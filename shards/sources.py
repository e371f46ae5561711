"""Where source images come from: a plan of samples, each located by (path, offset, size), so a
worker can read any image by one seek into an archive without extracting anything."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shards.errors import ShardsError

WHOLE_FILE = -1


@dataclass(frozen=True)
class Sample:
    key: str  # the shard's __key__, unique, derived from the source file name
    source: str  # original file name, e.g. n01440764_10026.JPEG
    label: int
    path: str  # archive or image file
    offset: int  # byte offset of the image inside `path`
    size: int  # bytes, or WHOLE_FILE

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.size == WHOLE_FILE:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class ClassEntry:
    wnid: str
    words: str


@dataclass
class Source:
    """A dataset before conversion: its classes in index order and each split's samples."""

    classes: list[ClassEntry]
    splits: dict[str, list[Sample]]
    description: dict


def key_for(name: str) -> str:
    """webdataset splits a key from its extensions at the first dot, so keys carry none."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def unique_keys(samples: list[Sample]) -> list[Sample]:
    """Two files with the same stem (e.g. img1.jpg and img1.png) get suffixes, never a clash."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        n = seen.get(s.key, 0)
        seen[s.key] = n + 1
        out.append(s if n == 0 else Sample(f"{s.key}_{n}", s.source, s.label, s.path, s.offset, s.size))
    if len({s.key for s in out}) != len(out):
        raise ShardsError("could not derive unique sample keys from the file names; rename the clashing files")
    return out
