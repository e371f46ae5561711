"""Stopping a run without losing it, the driver's side. Ctrl-C or SIGTERM (a user, a scheduler's preemption,
`ray job stop`, `kubectl delete`) asks the workers to checkpoint at the step they are at and
end; the run is recorded as `stopped`, the process exits 128 + the signal (130, 143), and
`resume=true` continues at exactly that step. A second signal stops at once.

How a request reaches the workers:
- Ray: the driver writes a `stop` file into the run's folder (`RunFolder.request_stop`); rank 0
  polls it from a background thread (`worker.signals.StopWatch`), so the training loop never waits on storage.
- torchrun / `orchestrator.local`: the signal reaches the worker process itself (the terminal
  sends Ctrl-C to the whole process group; torchrun forwards SIGTERM), caught by `worker.signals.Signals`.
Ranks then agree with one all-reduce at fixed steps (`Trainer.stop_agreed`), so every rank
stops after the same step and writes (rank 0) or reports the same checkpoint."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Protocol

from orchestrator.worker.signals import Signals, describe

log = logging.getLogger(__name__)


@contextlib.contextmanager
def interrupts_blocked() -> Iterator[None]:
    """Processes started inside (an embedded Ray's GCS, raylet, dashboard) inherit a blocked
    SIGINT: the terminal sends Ctrl-C to the whole foreground process group, and it must reach
    only the driver, which stops the run in order."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequests:
    """The driver's side: on the first signal, every run this process is driving gets a stop
    request in its folder (written from a thread: storage may be slow, a signal handler must
    not be), and runs not yet launched (a sweep's queue) are not started."""

    def __init__(self) -> None:
        self.signals: Signals | None = None
        self.active: dict[str, RequestsStop] = {}
        self.lock = threading.Lock()

    def install(self) -> None:
        """From the main thread, after Ray's own handlers (ray.init installs one for SIGTERM)."""
        if self.signals is None and threading.current_thread() is threading.main_thread():
            self.signals = Signals(self._on_first)

    @property
    def signum(self) -> int | None:
        return self.signals.signum if self.signals else None

    def _on_first(self, signum: int) -> None:
        log.warning(
            "%s: the workers write a checkpoint at their current step and stop; %s again stops at once",
            describe(signum), "Ctrl-C" if signum == signal.SIGINT else "the signal",
        )  # fmt: skip
        with self.lock:
            runs = list(self.active.values())
        for run in runs:
            threading.Thread(target=run.request_stop, args=(describe(signum),), daemon=True).start()

    def track(self, name: str, run: RequestsStop) -> None:
        with self.lock:
            self.active[name] = run
        if self.signum is not None:  # the signal came while this run was being launched
            run.request_stop(describe(self.signum))

    def untrack(self, name: str) -> None:
        with self.lock:
            self.active.pop(name, None)


class RequestsStop(Protocol):
    def request_stop(self, reason: str) -> None: ...


# The one per process. Not in orchestrator.train: run as `python -m orchestrator.train` that is
# __main__, and a sweep's launcher imports orchestrator.train a second time, which would make a
# second object that no signal handler knows about.
STOPS = StopRequests()  # Ctrl-C / SIGTERM: the runs this process drives checkpoint and stop
