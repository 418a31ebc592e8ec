"""emoframe's log records: the standard library's logging, under the ``emoframe`` logger.

A module logs through ``logging.getLogger(__name__)`` (``emoframe.flows.run.label_archive`` ...); what is
the command's answer (a summary, a query's table, a path written) is printed, not logged. ``configure``
sets the level (`--log-level`) and one handler on stderr. Under Prefect, the ``emoframe`` logger is also one
of Prefect's extra loggers, so its records reach the flow run's logs on the Prefect server, and an explicit
level applies to Prefect's own records too (`--log-level warning` is a quiet run).
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "emoframe"
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "info"
FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"  # Prefect's console layout


class _Handler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives (pytest and the CLI's tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        # Assigned, not setStream(): that flushes the stream it replaces, which may be closed by now (an
        # earlier test's captured stderr), and the record would fail instead of printing.
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str | None = None) -> logging.Logger:
    """The ``emoframe`` logger at ``level`` (one of LEVELS; None keeps a level set earlier, else info), with
    one stderr handler. An explicit level is also given to Prefect (PREFECT_LOGGING_LEVEL), which reads it
    when it is first imported: call this before importing Prefect for that part to apply."""
    if level is not None and level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    logger = logging.getLogger(LOGGER)
    if level is not None:
        logger.setLevel(level.upper())
        os.environ["PREFECT_LOGGING_LEVEL"] = level.upper()
    elif logger.level == logging.NOTSET:
        logger.setLevel(DEFAULT_LEVEL.upper())
    if not any(isinstance(h, _Handler) for h in logger.handlers):
        logger.addHandler(_Handler())
    # Our handler prints; the root's (Prefect's console handler, once Prefect is imported) would print again.
    logger.propagate = False
    # Records from outside a flow run (the listing, leftovers swept) have no run to attach to: not a warning.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    extra = [x for x in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if x.strip()]
    if LOGGER not in extra:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, LOGGER])
    return logger

