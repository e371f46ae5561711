"""The shard reader: the members webdataset's tarfile path reads, from plain ustar shards and
from every other tar (compressed, pax, GNU long names, directories), and a damaged stream ends
where tarfile's would."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest
import webdataset as wds
from webdataset.tariterators import tar_file_expander

from orchestrator.data.tar_members import tar_members


def webdataset_members(data: bytes) -> list[tuple[str, bytes]]:
    source = {"url": "x", "stream": io.BytesIO(data)}
    return [(m["fname"], m["data"]) for m in tar_file_expander([source], handler=wds.ignore_and_continue) if m]


def ours(data: bytes) -> list[tuple[str, bytes]]:
    return [(m["fname"], m["data"]) for m in tar_members("x", io.BytesIO(data))]


def tar(files: list[tuple[str, bytes]], format: int = tarfile.USTAR_FORMAT, dirs: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format) as t:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            t.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


SIZES = [0, 1, 511, 512, 513, 5000]  # around the 512-byte block
FILES = [(f"s{i:03d}.{ext}", os.urandom(n)) for i, n in enumerate(SIZES) for ext in ("jpg", "cls")]


def test_our_shards_read_as_webdataset_reads_them(tiny_shards):
    for name in sorted(os.listdir(tiny_shards)):
        if name.endswith(".tar"):
            with open(os.path.join(tiny_shards, name), "rb") as f:
                data = f.read()
            assert ours(data) == webdataset_members(data) and len(ours(data)) > 10


@pytest.mark.parametrize(
    "data",
    [
        tar(FILES),
        tar(FILES, dirs=("a", "a/b")),
        gzip.compress(tar(FILES)),  # compressed: tarfile from the first block
        tar([*FILES[:4], ("d" * 150 + ".jpg", b"pax"), *FILES[4:]], tarfile.PAX_FORMAT),  # pax in the middle
        tar([*FILES[:4], ("g" * 150 + ".jpg", b"gnu"), *FILES[4:]], tarfile.GNU_FORMAT),  # GNU long name
        tar([("p" * 120 + "/x.jpg", b"prefix"), *FILES]),  # a ustar name split into prefix and name
        tar([("__meta__", b"skipped"), *FILES]),
    ],
    ids=["ustar", "directories", "gzip", "pax", "gnu", "ustar-prefix", "meta"],
)
def test_every_tar_reads_as_webdataset_reads_it(data):
    assert ours(data) == webdataset_members(data)
    assert len(ours(data)) >= len(FILES)


def test_a_truncated_or_damaged_tar_ends_after_its_last_whole_member():
    data = tar(FILES)
    cut = data[: len(data) // 2]
    got = ours(cut)
    assert 0 < len(got) < len(FILES) and got == FILES[: len(got)]
    assert all(name == want and len(d) == len(w) for (name, d), (want, w) in zip(got, FILES, strict=False))
    damaged = bytearray(data)
    damaged[1024 + 10] ^= 0xFF  # the third member's header (the first two hold no data)
    assert ours(bytes(damaged)) == FILES[:2] == webdataset_members(bytes(damaged))
    assert ours(b"") == [] and ours(b"\0" * 1024) == []
