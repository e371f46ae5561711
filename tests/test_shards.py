"""shards/: ILSVRC archives and folders -> WebDataset shards + manifest, read back plainly."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from ilsvrc_fixtures import COLOURS, LEAVES, encode, make_archives
from PIL import Image

from shards import convert as convert_module
from shards.__main__ import main
from shards.convert import Settings, convert
from shards.destination import Destination
from shards.ilsvrc import ilsvrc_source
from shards.manifest import read_manifest

WNIDS = sorted(LEAVES)


def read_samples(path: str) -> dict[str, dict[str, bytes]]:
    """Group a shard's members by key with nothing but the standard library."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def all_samples(root: str, split: str) -> dict[str, dict[str, bytes]]:
    out = {}
    for shard in read_manifest(root).splits[split]:
        out.update(read_samples(os.path.join(root, shard.name)))
    return out


def nearest_class(jpg: bytes) -> str:
    pixel = np.asarray(Image.open(io.BytesIO(jpg))).reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda w: np.abs(pixel - COLOURS[w]).sum())


@pytest.fixture
def archives(tmp_path):
    return make_archives(tmp_path)


def run_cli(*argv: str) -> int:
    return main(list(argv))


def test_imagenet_conversion_labels_every_sample_right(archives, tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert (
        run_cli(
            "imagenet",
            "--train-tar",
            archives.train,
            "--val-tar",
            archives.val,
            "--devkit",
            archives.devkit,
            "--out",
            out,
            "--resize",
            "64",
            "--shard-size",
            "7",
            "--workers",
            "2",
        )
        == 0
    )
    assert "skipped" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert [c.wnid for c in manifest.classes] == WNIDS  # leaves only, sorted
    assert [c.words for c in manifest.classes] == ["tench", "goldfish", "springer", "test"]
    for split, sources in (("train", archives.train_sources), ("val", archives.val_sources)):
        samples = all_samples(out, split)
        assert len(samples) == len(sources) == manifest.samples(split)
        for key, sample in samples.items():
            meta = json.loads(sample["json"])
            expected = sources[meta["source"]]
            assert meta["wnid"] == expected
            assert int(sample["cls"]) == WNIDS.index(expected)  # never the ILSVRC2012_ID
            if meta["source"] != f"{WNIDS[1]}_0.JPEG":  # the planted grayscale image has no hue
                assert nearest_class(sample["jpg"]) == expected
            img = Image.open(io.BytesIO(sample["jpg"]))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert min(img.size) == 64 and (meta["width"], meta["height"]) == img.size
            assert key == meta["source"].rsplit(".", 1)[0]
    # shuffled across shards: the first train shard mixes classes
    first = read_samples(os.path.join(out, "train-000000.tar"))
    assert len({json.loads(s["json"])["wnid"] for s in first.values()}) > 1
    assert manifest.stats is not None and len(manifest.stats.eigvec) == 3
    assert manifest.stats.eigval == sorted(manifest.stats.eigval, reverse=True)


def test_aspect_is_kept_when_resizing(archives, tmp_path):
    out = tmp_path / "s"
    convert(
        ilsvrc_source(archives.train, None, archives.devkit),
        Destination(str(out)),
        Settings(resize=100, shard_size=50, workers=1),
    )
    for sample in all_samples(str(out), "train").values():
        meta = json.loads(sample["json"])
        w, h = archives.sizes[meta["source"]]
        got = (meta["width"], meta["height"])
        assert min(got) == 100
        assert max(got) == round(max(w, h) * 100 / min(w, h))


def test_manifest_records_shards_that_match_the_files(archives, tmp_path):
    import hashlib

    out = tmp_path / "s"
    convert(
        ilsvrc_source(archives.train, archives.val, archives.devkit),
        Destination(str(out)),
        Settings(resize=32, shard_size=6, workers=1),
    )
    manifest = read_manifest(str(out))
    for shard in manifest.splits["train"] + manifest.splits["val"]:
        data = (out / shard.name).read_bytes()
        assert len(data) == shard.bytes
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert len(read_samples(str(out / shard.name))) == shard.samples
    assert manifest.settings["resize"] == 32


def test_unreadable_image_is_skipped_and_listed(tmp_path):
    archives = make_archives(tmp_path, broken=True)
    out = tmp_path / "s"
    _, summary = convert(
        ilsvrc_source(archives.train, None, archives.devkit),
        Destination(str(out)),
        Settings(resize=32, workers=1),
    )
    manifest = read_manifest(str(out))
    assert summary.skipped == 1
    assert [s.source for s in manifest.skipped] == [f"{WNIDS[2]}_0.JPEG"]
    assert "UnidentifiedImageError" in manifest.skipped[0].reason
    assert manifest.samples("train") == len(archives.train_sources) - 1


def test_interrupted_conversion_resumes_and_never_leaves_a_bad_manifest(archives, tmp_path, monkeypatch):
    out = tmp_path / "s"
    source = ilsvrc_source(archives.train, archives.val, archives.devkit)
    settings = Settings(resize=32, shard_size=4, workers=1)
    real = convert_module.write_shard
    calls = []

    def dies_on_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(convert_module, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert(source, Destination(str(out)), settings)
    assert not (out / "manifest.json").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]
    monkeypatch.setattr(convert_module, "write_shard", real)
    _, summary = convert(source, Destination(str(out)), settings)
    assert 2 <= summary.reused < summary.shards  # the pool may finish one more before stopping
    assert summary.converted < summary.images
    total = len(archives.train_sources) + len(archives.val_sources)
    assert summary.images == total
    # A damaged shard is detected (sha256) and rewritten; a settings change rewrites all.
    first = read_manifest(str(out)).splits["train"][0]
    (out / first.name).write_bytes(b"\0" * first.bytes)
    _, summary = convert(source, Destination(str(out)), settings)
    assert summary.reused == summary.shards - 1
    assert read_samples(str(out / first.name))
    _, summary = convert(source, Destination(str(out)), Settings(resize=40, shard_size=4, workers=1))
    assert summary.reused == 0


def test_folder_mode(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for wnid in ("zebra", "apple", "mango"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"img{i}.jpg").write_bytes(encode(Image.new("RGB", (90, 60), (i, 0, 0))))
    out = tmp_path / "s"
    assert (
        run_cli(
            "folder",
            "--train",
            str(tmp_path / "train"),
            "--val",
            str(tmp_path / "val"),
            "--out",
            f"file://{out}",
            "--resize",
            "48",
            "--workers",
            "1",
        )
        == 0
    )
    manifest = read_manifest(str(out))
    assert [c.wnid for c in manifest.classes] == ["apple", "mango", "zebra"]
    samples = all_samples(str(out), "train")
    assert len(samples) == 12 and len(all_samples(str(out), "val")) == 6
    for sample in samples.values():
        meta = json.loads(sample["json"])
        assert int(sample["cls"]) == ["apple", "mango", "zebra"].index(meta["wnid"])


def test_memory_destination(archives):
    source = ilsvrc_source(None, archives.val, archives.devkit)
    manifest, _ = convert(source, Destination("memory://shards-test"), Settings(resize=32, workers=2))
    assert read_manifest("memory://shards-test").samples("val") == manifest.samples("val") == 12


@pytest.mark.slow
def test_s3_destination_against_a_local_s3_server(archives, s3_bucket):
    import s3fs

    bucket, options = s3_bucket
    url = f"s3://{bucket}/imagenet"
    assert (
        run_cli(
            "imagenet",
            "--val-tar",
            archives.val,
            "--devkit",
            archives.devkit,
            "--out",
            url,
            "--resize",
            "32",
            "--workers",
            "2",
            "--storage-options",
            json.dumps(options),
        )
        == 0
    )
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    manifest = read_manifest(url, options)
    assert manifest.samples("val") == len(archives.val_sources)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/imagenet")}
    assert {s.name for s in manifest.splits["val"]} <= names
    assert not [n for n in names if n.endswith(".partial")]
    with tarfile.open(fileobj=io.BytesIO(fs.cat(f"{bucket}/imagenet/val-000000.tar"))) as tar:
        assert len(tar.getnames()) == 3 * len(archives.val_sources)


def test_demo_builds_real_photographs(tmp_path):
    out = tmp_path / "demo"
    assert (
        run_cli(
            "demo",
            "--out",
            str(out),
            "--train-per-class",
            "12",
            "--val-per-class",
            "3",
            "--workers",
            "1",
        )
        == 0
    )
    manifest = read_manifest(str(out))
    assert len(manifest.classes) >= 8
    assert manifest.samples("train") == 12 * len(manifest.classes)
    assert manifest.samples("val") == 3 * len(manifest.classes)
    assert manifest.skipped == []  # the CMYK and PNG-named-JPEG quirks convert cleanly
    sample = next(iter(all_samples(str(out), "train").values()))
    assert min(Image.open(io.BytesIO(sample["jpg"])).size) == 128


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": "missing.tar"}, "does not exist"),
        ({"train": "NOT_A_TAR"}, "is not a tar archive"),
        ({"devkit": "EMPTY_TAR"}, "has no data/meta.mat"),
        ({"devkit": "OTHER_CLASSES"}, "not a leaf synset of the devkit"),
    ],
)
def test_bad_input_is_one_clear_sentence(archives, tmp_path, capsys, change, message):
    paths = {"train": archives.train, "devkit": archives.devkit}
    for name, value in change.items():
        path = tmp_path / f"{name}-{value}"
        if value == "NOT_A_TAR":
            path.write_bytes(b"plain text, not an archive" * 100)
        elif value == "EMPTY_TAR":
            tarfile.open(path, "w").close()
        elif value == "OTHER_CLASSES":
            other = tmp_path / "other"
            other.mkdir()
            make_archives(other)
            with tarfile.open(other / "ILSVRC2012_img_train.tar", "a") as t:
                inner = io.BytesIO()
                tarfile.open(fileobj=inner, mode="w").close()
                info = tarfile.TarInfo("n07777777.tar")
                info.size = len(inner.getvalue())
                t.addfile(info, io.BytesIO(inner.getvalue()))
            paths["train"] = str(other / "ILSVRC2012_img_train.tar")
            continue
        paths[name] = str(path)
    out = tmp_path / "out"
    assert (
        run_cli(
            "imagenet",
            "--train-tar",
            paths["train"],
            "--devkit",
            paths["devkit"],
            "--out",
            str(out),
            "--workers",
            "1",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not (out / "manifest.json").exists()
