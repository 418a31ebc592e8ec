"""Stopping every process of a Ray that a run started itself, however the run ends.

``ray.shutdown()`` stops the services it started, but not everything they started: a worker that was still
starting (in a process group of its own, waiting on a GCS that is gone) or Ray's two agents were seen alive
15-20 s after the run. And a run can end before its shutdown does: `prefect worker` stopped right after a
run reported Completed kills the run's process hard, inside ``ray.shutdown()``.

So the run marks the Ray it starts: ``ray.init()`` runs with ``EMOFRAME_RAY_OWNER=<token>`` in the
environment, which Ray's services and every worker they start inherit, and nothing else does (the variable
is gone again once ``ray.init()`` returns). Ray's agents inherit it too, but rename themselves
(``ray::DashboardAgent``) over the memory that /proc shows as their environment; they are known instead by
that name and a log they hold open in the session's folder. A command line or an open file alone would not
do: a user's ``tail -f`` of a Ray log names the session and holds its file. Then a guard process waits on a
pipe from the run; when the run says it is done, the guard exits; when the pipe closes without that (the
run died, a SIGKILL included), the guard kills this user's processes of that Ray. The run kills them itself
after its own shutdown too, so a clean exit leaves nothing either.

This module imports only the standard library and psutil: the guard starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import psutil

logger = logging.getLogger(__name__)

OWNER_VAR = "EMOFRAME_RAY_OWNER"
_DONE = b"done\n"


def new_mark() -> str:
    return f"{os.getpid()}-{secrets.token_hex(8)}"


@contextlib.contextmanager
def marking(mark: str) -> Iterator[None]:
    """Processes started inside inherit the mark (Ray's services, started by ``ray.init()``). The variable
    is the process's: whatever another thread starts meanwhile carries it too (nothing does in a run)."""
    before = os.environ.get(OWNER_VAR)
    os.environ[OWNER_VAR] = mark
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OWNER_VAR, None)
        else:
            os.environ[OWNER_VAR] = before


def _of_that_ray(proc: psutil.Process, mark: str, session_dir: str | None) -> bool:
    if proc.environ().get(OWNER_VAR) == mark:
        return True
    if session_dir is None:
        return False
    name = (proc.info["cmdline"] or [""])[0]
    return name.startswith("ray::") and any(f.path.startswith(session_dir) for f in proc.open_files())


def kill_marked(mark: str, session_dir: str | None) -> list[int]:
    """SIGKILLs this user's processes, other than this one, of the Ray marked ``mark`` whose session folder
    is ``session_dir`` (None: not known, the mark alone decides); returns their pids once they are gone (or
    after 5 s)."""
    me, uid, found = os.getpid(), os.getuid(), []
    if session_dir is not None:  # /proc shows open files by their real path; RAY_TMPDIR may be a link
        session_dir = os.path.join(os.path.realpath(session_dir), "")
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.info["pid"] == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if _of_that_ray(proc, mark, session_dir):
                proc.kill()
                found.append(proc)
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    psutil.wait_procs(found, timeout=5)
    return [p.pid for p in found]


class SessionGuard:
    """A guard process for the Ray marked ``mark`` (session folder ``session_dir``): ``done()`` once this
    process has stopped that Ray and killed the leftovers; if this process dies first, the guard kills them."""

    def __init__(self, mark: str, session_dir: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != OWNER_VAR}  # never one of the marked itself
        # Its own session: a stop signal sent to the run's process group does not stop the guard before the
        # run is gone. Silent: a run stopped with Ctrl-C ends on one line of its own. The pipe's write end is
        # close-on-exec, so no child the run starts keeps it open.
        # -P: the run's working folder is not put first on the guard's import path.
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", __name__], stdin=subprocess.PIPE, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mark}\n{session_dir}\n".encode())
        self.proc.stdin.flush()

    def done(self) -> None:
        if self.proc.poll() is not None:
            logger.warning("the guard of this run's Ray had already exited (code %s)", self.proc.returncode)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(_DONE)
            self.proc.stdin.close()
        except OSError:  # the guard died: nothing left to tell it
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _guard() -> None:
    mark, session_dir = (sys.stdin.buffer.readline().decode().strip() for _ in range(2))
    # A line, not the end of the pipe: a child the run forked without exec would hold its end open.
    if mark and session_dir and sys.stdin.buffer.readline() != _DONE:  # closed without it: the run is gone
        kill_marked(mark, session_dir)


if __name__ == "__main__":
    _guard()
