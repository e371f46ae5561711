"""Where shards go: any fsspec URL. A file appears under its final name only when complete."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shards.errors import ShardsError


class Destination:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as err:
            raise ShardsError(
                f"cannot open destination {url}: {err}; check the URL scheme and --storage-options"
            ) from None

    def __getstate__(self) -> dict:  # workers rebuild the filesystem from URL and options
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def in_process_only(self) -> bool:
        """memory:// lives in this process: other processes cannot see what they write."""
        return "memory" in self.fs.protocol

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def ensure_writable(self) -> None:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except (OSError, PermissionError) as err:
            raise ShardsError(
                f"cannot create {self.url} ({type(err).__name__}); check the path and credentials"
            ) from None

    def staging_file(self, name: str) -> str:
        """A local file to write `name` into before publishing it."""
        folder = os.path.dirname(self.path(name)) if self.local else None
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".partial", dir=folder)
        os.close(fd)
        return tmp

    def publish(self, staged: str, name: str) -> None:
        """Rename on local disk; on object storage a single PUT is atomic, never half-visible."""
        try:
            if self.local:
                os.replace(staged, self.path(name))
            else:
                self.fs.put_file(staged, self.path(name))
        finally:
            if os.path.exists(staged):
                os.remove(staged)

    def write_text(self, name: str, text: str) -> None:
        staged = self.staging_file(name)
        with open(staged, "w") as f:
            f.write(text)
        self.publish(staged, name)

    def read_text(self, name: str) -> str | None:
        try:
            return self.fs.cat_file(self.path(name)).decode()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        if self.fs.exists(self.path(name)):
            self.fs.rm_file(self.path(name))

    def size(self, name: str) -> int | None:
        try:
            return self.fs.size(self.path(name))
        except FileNotFoundError:
            return None

    def open(self, name: str, mode: str = "rb"):
        return self.fs.open(self.path(name), mode)
