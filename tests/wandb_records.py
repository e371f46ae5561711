"""The records of an offline W&B run (its run-<id>.wandb file), as `wandb sync` would upload
them: W&B 0.31 keeps no Python reader, so this reads the format itself. The file is a header
(":W&B", a 2-byte magic, a version byte), then 32 KiB blocks of chunks: CRC-32 (4 bytes),
length (2, little-endian), type (1: whole, 2: first, 3: middle, 4: last), data; whole records
are protobuf `Record`s."""

from __future__ import annotations

import glob
import json
import os

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
CHUNK_HEADER = 7


def records(path: str) -> list[pb.Record]:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    found, pending, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def offline_run(run_dir: str, launches: int = 1) -> list[pb.Record]:
    """The records of the offline W&B run under `run_dir`: of its last launch, when a resumed
    run (the same W&B id) left `launches` of them."""
    paths = glob.glob(os.path.join(run_dir, "**", "offline-run-*", "run-*.wandb"), recursive=True)
    assert len(paths) == launches, paths
    return records(max(paths))  # offline-run-<date>_<time>-<id>: the newest sorts last


def of_type(found: list[pb.Record], kind: str) -> list:
    return [getattr(r, kind) for r in found if r.WhichOneof("record_type") == kind]


def tags(found: list[pb.Record]) -> list[str]:
    """The run's tags as last set."""
    runs = [r for r in of_type(found, "run") if r.tags]
    return list(runs[-1].tags) if runs else []


def summary(found: list[pb.Record]) -> dict:
    values = {}
    for record in of_type(found, "summary"):
        for item in record.update:
            values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def artifacts(found: list[pb.Record]) -> list[dict]:
    """Each logged artifact: name, type, aliases, metadata and its manifest's entries."""
    return [
        {
            "name": a.name,
            "type": a.type,
            "aliases": list(a.aliases),
            "metadata": json.loads(a.metadata or "{}"),
            "entries": {e.path: {"ref": e.ref, "digest": e.digest} for e in a.manifest.contents},
        }
        for a in of_type(found, "artifact")
    ]


def exit_code(found: list[pb.Record]) -> int | None:
    exits = of_type(found, "exit")
    return exits[-1].exit_code if exits else None
