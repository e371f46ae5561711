"""manifest.json: the contract between the shard writer and every reader of the shards.

It sits at the root of the shards URL and lists each split's shards (sample count, bytes,
sha256), the classes, and the dataset statistics training needs (mean/std, PCA eigen)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

FORMAT = "alexnet-wds/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ClassInfo:
    index: int
    wnid: str
    words: str


@dataclass(frozen=True)
class Statistics:
    """Pixel statistics in [0, 1] RGB: per-channel mean/std, and the eigen-decomposition of
    the pixel covariance (eigvec columns are eigenvectors) for the paper's colour noise."""

    mean: list[float]
    std: list[float]
    eigval: list[float]
    eigvec: list[list[float]]
    images: int


@dataclass(frozen=True)
class Skipped:
    split: str
    source: str
    reason: str


@dataclass
class Manifest:
    classes: list[ClassInfo]
    splits: dict[str, list[ShardInfo]]
    stats: Statistics | None
    settings: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    format: str = FORMAT

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.splits.get(split, []))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {raw.get('format')!r}, expected {FORMAT!r}")
        stats = raw.get("stats")
        return cls(
            classes=[ClassInfo(**c) for c in raw["classes"]],
            splits={k: [ShardInfo(**s) for s in v] for k, v in raw["splits"].items()},
            stats=Statistics(**stats) if stats else None,
            settings=raw.get("settings", {}),
            skipped=[Skipped(**s) for s in raw.get("skipped", [])],
        )


def sha256_of(stream) -> str:
    """The sha256 of a binary stream, read in 1 MiB blocks (what the manifest records per shard)."""
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def manifest_url(root: str) -> str:
    return root.rstrip("/") + "/" + MANIFEST_NAME


def read_manifest(root: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Read `<root>/manifest.json` through fsspec; FileNotFoundError if there is none."""
    with fsspec.open(manifest_url(root), "r", **(storage_options or {})) as f:
        return Manifest.from_json(f.read())
