"""fsspec URLs (paths, file://, s3://, gs://, memory://) -> filesystems, for us and for Ray."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pyarrow.fs


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **(options or {}))


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def ray_storage(url: str, options: dict[str, Any] | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray Train's (storage_path, storage_filesystem). Local paths go as they are; anything else
    goes through fsspec (custom endpoints, credentials in options) wrapped for pyarrow."""
    if is_local(url):
        return url.removeprefix("file://"), None
    fs, path = filesystem(url, options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def read_text(url: str, options: dict[str, Any] | None = None) -> str | None:
    fs, path = filesystem(url, options)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def write_text(url: str, text: str, options: dict[str, Any] | None = None) -> None:
    """One PUT on object storage; write-then-rename on local disk, so readers never see half."""
    fs, path = filesystem(url, options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if is_local(url):
        tmp = path + ".partial"
        fs.pipe_file(tmp, text.encode())
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, text.encode())


def exists(url: str, options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


def list_dirs(url: str, options: dict[str, Any] | None = None) -> list[str]:
    fs, path = filesystem(url, options)
    try:
        return sorted(
            p["name"].rsplit("/", 1)[-1] for p in fs.ls(path, detail=True) if p["type"] == "directory"
        )
    except FileNotFoundError:
        return []


def read_json(url: str, options: dict[str, Any] | None = None) -> Any:
    text = read_text(url, options)
    return None if text is None else json.loads(text)
