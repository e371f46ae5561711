"""A training process's side of stopping without loss: its own SIGINT/SIGTERM handlers (torchrun,
`orchestrator.local`), the watch on the driver's stop request (Ray), and the exit codes a shell
sees. How a request travels is told in orchestrator/launch/stops.py."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


# The terminal delivers Ctrl-C to every process of the foreground group and torchrun forwards
# it again: a repeat this soon after the first is the same request, not a second Ctrl-C.
SAME_REQUEST_S = 1.0


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class Signals:
    """Installs SIGINT/SIGTERM handlers (main thread only) until `restore`. The first signal
    calls `on_first(signum)`; a second one (later than SAME_REQUEST_S) raises
    KeyboardInterrupt in the main thread: stop at once."""

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self.on_first = on_first
        self.signum: int | None = None
        self.first_at = 0.0
        self.previous = {s: signal.getsignal(s) for s in HANDLED}
        for s in HANDLED:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum, self.first_at = signum, time.monotonic()
            self.on_first(signum)
        elif time.monotonic() - self.first_at > SAME_REQUEST_S:
            self.restore()
            raise KeyboardInterrupt

    @property
    def received(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def describe(signum: int) -> str:
    return signal.Signals(signum).name


class StopWatch:
    """A daemon thread that asks `requested()` (a storage read) every `every_s` seconds and
    remembers the first yes; reading `.requested` costs nothing."""

    def __init__(self, requested: Callable[[], bool], every_s: float = 1.0) -> None:
        self._seen = threading.Event()
        self._closed = threading.Event()
        self._requested, self._every_s = requested, every_s
        threading.Thread(target=self._watch, name="stop-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._closed.wait(self._every_s):
            try:
                if self._requested():
                    self._seen.set()
                    return
            except Exception as err:  # a storage hiccup: ask again next time
                log.debug("stop watch: %s", err)

    @property
    def requested(self) -> bool:
        return self._seen.is_set()

    def close(self) -> None:
        self._closed.set()
