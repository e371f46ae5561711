"""Reading shards: the manifest, and the raw (undecoded) samples of a rank's spans of shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import webdataset as wds
from webdataset.tariterators import group_by_keys

from orchestrator import storage
from orchestrator.config import ConfigError
from orchestrator.data.bad_samples import Skips
from orchestrator.data.plan import Reading
from orchestrator.data.tar_members import tar_members
from shards.manifest import MANIFEST_NAME, Manifest


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
