"""Which stop signals (SIGINT, SIGTERM) this process has received, whatever handler is in place when they come.

Prefect's engine turns SIGTERM into TerminationSignal, and once Ray is up its driver handler turns it into
``sys.exit(SIGTERM)``. Either exception is raised wherever the main thread is, and a library calling back into
Python can wrap it in its own: pydantic's serializer turned ``SystemExit(15)`` into a
PydanticSerializationError while prefect-ray serialised a task's context, and the CLI printed a traceback
instead of its one line and exit 143 (seen once in `make reliability`). So each handler is wrapped by one that
records the signal first; the CLI asks here whether an error it got is a stop signal in disguise. ``watch``
again after code that installs its own handler (ray.init)."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_seen: list[int] = []


def watch() -> None:
    """Wraps the current SIGINT and SIGTERM handlers so that each signal is recorded before they run. Only the
    main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if getattr(current, "records_stops", False):
            continue
        signal.signal(sig, _recording(current))


def _recording(previous: Any):
    def handler(signum: int, frame: FrameType | None) -> None:
        _seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # what the signal would have done: end the process
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    handler.records_stops = True  # type: ignore[attr-defined]
    return handler


def first_seen() -> int | None:
    """The first stop signal received since ``forget``, or None."""
    return _seen[0] if _seen else None


def forget() -> None:
    _seen.clear()
