"""The Prefect API a run talks to: the configured one, or a temporary local server that lives as long as the run.

The temporary server runs in its own session, so the SIGINT a terminal sends to the foreground process group
on Ctrl-C reaches the run but not the server: the run can still record its own end there and stop within
seconds (with the server gone first, Prefect retried reporting the crash for about 80 s). It also dies with
the run on SIGKILL (workers/processes/lifeline.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from unittest import mock

from emoframe.workers.processes.lifeline import die_with_parent


def _start_detached_server():
    """Prefect's SubprocessASGIServer, its process started in a new session that dies with this one. Prefect
    builds the server's command line itself; only the Popen call is given the two extra settings."""
    from prefect.server.api import server as prefect_server

    popen = subprocess.Popen

    def detached(*args, **kwargs):
        return popen(*args, start_new_session=True, preexec_fn=die_with_parent(), **kwargs)

    server = prefect_server.SubprocessASGIServer()
    with mock.patch.object(prefect_server.subprocess, "Popen", detached):
        server.start(timeout=180)
    return server


_temporary_url: str | None = None  # the API of the temporary server while one runs in this process


def outlives_the_run() -> bool:
    """Whether what the run records in Prefect can be seen after it (a configured server), rather than
    vanishing with the temporary one: artifacts are made only then."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) and PREFECT_API_URL.value() != _temporary_url


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API every process of the run talks to: PREFECT_API_URL when set, else one temporary
    local server shared by the flow and all Ray workers (left alone, each worker would start its own)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from an offline box
    global _temporary_url
    server = _start_detached_server()
    _temporary_url = server.api_url
    # The temporary server dies with the run, so logs are not shipped to it (otherwise the process
    # retries sending them for a minute at exit); they still go to the terminal.
    env = {"PREFECT_API_URL": server.api_url, "PREFECT_LOGGING_TO_API_ENABLED": "false"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by a local Ray started below
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield server.api_url
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _temporary_url = None
        server.stop()
