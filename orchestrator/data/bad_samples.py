"""Bad data: samples lost to damaged shards or images are counted and named, never fatal until
too many are lost (data.max_skipped_fraction)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Skips:
    """Samples lost to bad data in this process, counted until the loop collects them."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int, where: str, why: str) -> None:
        if n > 0:
            self.count += n
            log.warning("skipped %d sample(s) of %s: %s", n, where, why)

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


class DataError(RuntimeError):
    """The data is too damaged to train on: the message names what and how to fix it."""
