"""Console output through `logging`: our lines as plain text on stdout, warnings and errors on
stderr with a `warning:`/`error:` prefix, and on ranks other than 0 only warnings and errors
(every rank runs the same loop; one of them speaks)."""

from __future__ import annotations

import logging
import sys

ROOT = "orchestrator"


class Console(logging.Handler):
    """Looks up sys.stdout/sys.stderr at every line, so redirected streams (pytest, Ray's
    worker log capture) receive what is written after the redirection."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"{record.levelname.lower()}: {message}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(message + "\n")
                sys.stdout.flush()
        except Exception:
            self.handleError(record)


class RankZero(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup(rank: int = 0) -> None:
    """Idempotent: a worker calls it again with its rank once it knows it."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = next((h for h in logger.handlers if isinstance(h, Console)), None)
    if console is None:
        console = Console()
        logger.addHandler(console)
    # On the handler: a logger's own filters never see its children's records (orchestrator.trainer).
    for old in [f for f in console.filters if isinstance(f, RankZero)]:
        console.removeFilter(old)
    console.addFilter(RankZero(rank))
