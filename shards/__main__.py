"""python -m shards {imagenet,folder,demo}: datasets -> shuffled WebDataset shards + manifest."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from shards.convert import Settings, convert
from shards.demo import build_archives
from shards.destination import Destination
from shards.errors import ShardsError
from shards.folder import folder_source
from shards.ilsvrc import ilsvrc_source


def _common(p: argparse.ArgumentParser, resize: int, shard_size: int) -> None:
    p.add_argument("--out", required=True, help="destination URL: path, file://, s3://, gs://, memory://")
    p.add_argument("--resize", type=int, default=resize, help="short side in pixels (default %(default)s)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=shard_size, help="images per shard (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default %(default)s)")
    p.add_argument("--stats-images", type=int, default=2000, help="train images measured for mean/std/PCA")
    p.add_argument("--storage-options", default="{}", help="JSON for fsspec, e.g. '{\"endpoint_url\": ...}'")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    imagenet = sub.add_parser("imagenet", help="the official ILSVRC2012 archives, read as streams")
    imagenet.add_argument("--train-tar", help="ILSVRC2012_img_train.tar")
    imagenet.add_argument("--val-tar", help="ILSVRC2012_img_val.tar")
    imagenet.add_argument("--devkit", required=True, help="ILSVRC2012_devkit_t12.tar.gz")
    _common(imagenet, resize=256, shard_size=1000)
    folder = sub.add_parser("folder", help="ImageFolder trees: <root>/<class>/<image>")
    folder.add_argument("--train", help="train folder")
    folder.add_argument("--val", help="val folder")
    _common(folder, resize=256, shard_size=1000)
    demo = sub.add_parser("demo", help="a small dataset from photographs scikit-image ships")
    demo.add_argument("--train-per-class", type=int, default=320)
    demo.add_argument("--val-per-class", type=int, default=50)
    _common(demo, resize=128, shard_size=250)
    return p


def run(args: argparse.Namespace) -> str:
    for name in ("resize", "quality", "shard_size"):
        if getattr(args, name) < 1:
            raise ShardsError(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.quality <= 100:
        raise ShardsError("--quality must be between 1 and 100")
    try:
        options = json.loads(args.storage_options)
    except json.JSONDecodeError:
        raise ShardsError("--storage-options is not valid JSON; pass an object such as '{\"anon\": false}'") from None
    settings = Settings(args.resize, args.quality, args.shard_size, args.seed, args.workers, args.stats_images)
    dest = Destination(args.out, options)
    if args.command == "imagenet":
        if not (args.train_tar or args.val_tar):
            raise ShardsError("pass --train-tar, --val-tar or both")
        source = ilsvrc_source(args.train_tar, args.val_tar, args.devkit)
        _, summary = convert(source, dest, settings)
    elif args.command == "folder":
        if not (args.train or args.val):
            raise ShardsError("pass --train, --val or both")
        _, summary = convert(folder_source(args.train, args.val), dest, settings)
    else:
        with tempfile.TemporaryDirectory(prefix="alexnet-demo-") as tmp:
            train, val, devkit = build_archives(tmp, args.train_per_class, args.val_per_class, args.seed)
            _, summary = convert(ilsvrc_source(train, val, devkit), dest, settings)
    return f"{summary.line()}; manifest at {dest.url}/manifest.json"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(run(args))
    except ShardsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
