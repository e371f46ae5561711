"""A shard's files, straight from its byte stream, as webdataset's `{"fname", "data", "__url__"}`
dicts (what `group_by_keys` groups into samples).

webdataset reads tars with Python's tarfile, which parses every 512-byte header field by field
(checksums, pax and GNU extensions, sparse files) and reads data through its own stream layer:
0.08 ms of the ~0.45 ms a loader process spends per image here, three headers per sample (.cls,
.jpg, .json). Our shards are plain ustar (shards/convert.py writes them so), and for those this
reader takes one slice per field and one read() per file (its data, its padding and the next
header at once): see `make bench` (`loader_vs_bare_decode`). At the first header it does not
know — a compressed shard, a pax or GNU long-name record, a link — it hands the rest of the
stream to webdataset's tarfile reader, so every tar that webdataset reads still reads.

A damaged stream ends the shard as tarfile's streaming mode does: a bad header checksum or a
short read stops it, and the shard's shortfall is counted by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import webdataset as wds
from webdataset.tariterators import meta_prefix, meta_suffix, tar_file_expander

BLOCK = 512
_REGULAR = (b"0", b"\0")
_DIRECTORY = b"5"
_POSIX, _GNU = b"ustar\x00", b"ustar "
# The names webdataset's tar_file_iterator skips (its default skip_meta, and its meta prefix/suffix).
_META = re.compile(r"__[^/]*__($|/)")


def _meta(name: str) -> bool:
    return bool(_META.match(name)) or ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix))


def tar_members(url: str, stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """Every regular file of the tar on `stream`, in order."""
    header = stream.read(BLOCK)
    while len(header) == BLOCK:
        if header.count(0) == BLOCK:  # the end-of-archive blocks
            return
        if not _checksum_ok(header):
            if header[257:263] not in (_POSIX, _GNU):  # compressed, or a pre-POSIX tar
                yield from _tarfile_members(url, header, stream)
            return  # a damaged header ends the shard, as in tarfile after the first member
        kind = header[156:157]
        size = _size(header)
        if size is None or header[257:263] not in (_POSIX, _GNU) or kind not in (*_REGULAR, _DIRECTORY):
            yield from _tarfile_members(url, header, stream)
            return
        padded = -(-size // BLOCK) * BLOCK
        # This file's data, its padding and the next header, in one read.
        chunk = stream.read(padded + BLOCK) if kind != _DIRECTORY else stream.read(BLOCK)
        if kind == _DIRECTORY:
            header = chunk
            continue
        if len(chunk) < size:
            return  # truncated inside this file
        name = _name(header)
        if not _meta(name):
            yield {"fname": name, "data": chunk[:size], "__url__": url}
        header = chunk[padded:]


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum: the sum of its bytes, the checksum field counted as 8 spaces."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header) - sum(header[148:156]) + 8 * 32


def _size(header: bytes) -> int | None:
    """The file size, or None for the base-256 form of files over 8 GiB (left to tarfile)."""
    field = header[124:136]
    if field[0] & 0x80:
        return None
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == _POSIX else b""
    path = prefix + b"/" + name if prefix else name
    return path.decode("utf-8", "surrogateescape")


class _Replay:
    """`head`, then the rest of `stream`: tarfile reads on from a header already taken."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size is None or size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + (self.stream.read(size - len(data)) if len(data) < size else b"")


def _tarfile_members(url: str, header: bytes, stream: BinaryIO) -> Iterator[dict[str, Any]]:
    # A header tarfile reads after a member of ours starts a tar of its own for it: no global
    # state (offsets, pax globals) carries over between plain ustar members.
    source = {"url": url, "stream": _Replay(header, stream)}
    for member in tar_file_expander([source], handler=wds.ignore_and_continue):
        if "fname" in member:  # tar_file_expander's end-of-shard marker has none
            yield member
