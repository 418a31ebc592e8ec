"""A stop signal that reaches the CLI disguised (flows/run/stop_signals.py): Ray's driver handler turns SIGTERM
into ``sys.exit(15)``, and when that is raised inside a library's callback the library may wrap it. Seen in
`make reliability`: pydantic's serializer, called by prefect-ray while submitting a task, turned it into a
PydanticSerializationError, and the CLI printed a traceback instead of its one line and exit 143."""

from __future__ import annotations

import os
import signal
import sys
import time

import pydantic
import pydantic_core
import pytest

from emoframe.flows.cli.main import Interrupted, stop_on_signals
from emoframe.flows.run import stop_signals


class Context(pydantic.BaseModel):
    x: int = 0

    @pydantic.field_serializer("x")
    def _slow(self, x: int) -> int:  # where the signal lands: inside pydantic's Rust serializer
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return x


def _ray_like(signum, frame):  # what ray.init() installs in a driver
    sys.exit(signum)


def test_sigterm_wrapped_by_a_library_still_stops_the_run_as_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stop:
        with stop_on_signals():
            signal.signal(signal.SIGTERM, _ray_like)  # ray.init()
            stop_signals.watch()  # as RunRayTaskRunner does after it
            Context().model_dump()
    assert stop.value.signum == signal.SIGTERM and stop.value.name == "stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


def test_without_the_record_the_library_error_is_what_escapes():
    """The case the record exists for: pydantic does wrap the exit (if it stopped doing so, the test above
    would pass without the record)."""
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _ray_like)
    try:
        with pytest.raises(pydantic_core.PydanticSerializationError, match="SystemExit: 15"):
            Context().model_dump()
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_error_without_a_signal_is_left_alone():
    with pytest.raises(ValueError, match="not a signal"):
        with stop_on_signals():
            raise ValueError("not a signal")
