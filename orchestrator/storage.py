"""fsspec URLs (paths, file://, s3://, gs://, memory://) -> filesystems, for us and for Ray."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow
import pyarrow.fs

T = TypeVar("T")
log = logging.getLogger(__name__)
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def retrying(what: str, action: Callable[[], T], attempts: int = 8, first_wait_s: float = 1.0) -> T:
    """Run `action`, retrying transient failures (an unreachable endpoint, a dropped connection)
    with exponential backoff: about 90 s in all before giving up. A missing file or a refused
    permission is not transient and fails at once."""
    wait = first_wait_s
    for attempt in range(1, attempts):
        try:
            return action()
        except PERMANENT:
            raise
        except Exception as err:
            log.warning("%s failed (%s); retry %d/%d in %.0f s", what, type(err).__name__, attempt, attempts - 1, wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
    return action()  # the last try: its error goes to the caller


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **(options or {}))


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class RetryingHandler(pyarrow.fs.FSSpecHandler):
    """What Ray Train reads and writes its run state through (checkpoint_manager_snapshot.json,
    old checkpoints to delete): every call retried through storage outages, and writes
    buffered and uploaded whole on close, so the upload itself can be retried."""

    def open_output_stream(self, path: str, metadata: dict | None) -> pyarrow.NativeFile:
        fs = self.fs

        class WholeUpload(io.BytesIO):
            def close(self) -> None:
                if not self.closed:
                    data = self.getvalue()
                    retrying(f"writing {path}", lambda: fs.pipe_file(path, data))
                super().close()

        return pyarrow.PythonFile(WholeUpload(), mode="w")


def _retried(name: str) -> Callable:
    parent = getattr(pyarrow.fs.FSSpecHandler, name)

    def method(self, *args: Any, **kwargs: Any) -> Any:
        return retrying(f"{name} on {self.get_type_name()}", lambda: parent(self, *args, **kwargs))

    return method


for _name in ("copy_file", "create_dir", "delete_dir", "delete_dir_contents", "delete_file", "get_file_info",
              "get_file_info_selector", "move", "open_input_file", "open_input_stream"):  # fmt: skip
    setattr(RetryingHandler, _name, _retried(_name))


def ray_storage(url: str, options: dict[str, Any] | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray Train's (storage_path, storage_filesystem). Local paths go as they are; anything else
    goes through fsspec (custom endpoints, options) wrapped for pyarrow, with retries."""
    if is_local(url):
        return url.removeprefix("file://"), None
    fs, path = filesystem(url, options)
    return path, pyarrow.fs.PyFileSystem(RetryingHandler(fs))


def shard_url(root: str, name: str) -> str:
    """A file under a shards root; a pipe: root is a command with a {name} placeholder."""
    return root.replace("{name}", name) if root.startswith("pipe:") else join(root, name)


def open_url(url: str, options: dict[str, Any] | None = None):
    """A binary stream. `pipe:` runs a shell command (webdataset's convention): the config
    refuses it unless data.allow_pipe=true, so a URL never reaches a shell by accident."""
    if url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return fsspec.open(url, "rb", **(options or {})).open()


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def read_text(url: str, options: dict[str, Any] | None = None) -> str | None:
    fs, path = filesystem(url, options)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def write_text(url: str, text: str, options: dict[str, Any] | None = None) -> None:
    """One PUT on object storage; write-then-rename on local disk, so readers never see half.
    Retried through storage outages."""
    fs, path = filesystem(url, options)

    def write() -> None:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if is_local(url):
            tmp = path + ".partial"
            fs.pipe_file(tmp, text.encode())
            fs.mv(tmp, path)
        else:
            fs.pipe_file(path, text.encode())

    retrying(f"writing {url}", write)


def put_dir(local: str, url: str, options: dict[str, Any] | None = None) -> None:
    """Upload a local folder's files to `url`, retried through storage outages."""
    fs, path = filesystem(url, options)

    def put() -> None:
        fs.makedirs(path, exist_ok=True)
        fs.put(local.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)

    retrying(f"uploading to {url}", put)


def exists(url: str, options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


def list_dirs(url: str, options: dict[str, Any] | None = None) -> list[str]:
    fs, path = filesystem(url, options)
    try:
        return sorted(p["name"].rsplit("/", 1)[-1] for p in fs.ls(path, detail=True) if p["type"] == "directory")
    except FileNotFoundError:
        return []


def get_dir(url: str, local: str, options: dict[str, Any] | None = None) -> None:
    """Download a folder's files from `url` into the local folder, retried through outages."""
    fs, path = filesystem(url, options)
    retrying(f"downloading {url}", lambda: fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True))


def copy_dir(source: str, target: str, options: dict[str, Any] | None = None) -> None:
    """Replace the folder `target` by a copy of `source`, inside one storage (a server-side
    copy on object stores: nothing travels through this machine)."""
    fs, src = filesystem(source, options)
    _, dst = filesystem(target, options)

    def copy() -> None:
        if fs.exists(dst):
            fs.rm(dst, recursive=True)
        fs.copy(src.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)

    retrying(f"copying {source} to {target}", copy)


def remove_dir(url: str, options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(url, options)
    retrying(f"removing {url}", lambda: fs.rm(path, recursive=True))


def remove_file(url: str, options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(url, options)
    retrying(f"removing {url}", lambda: fs.rm_file(path))
