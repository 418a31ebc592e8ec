"""Services emoframe starts die with it, and what a killed run left behind is swept by the next one.

A SIGKILL (the OOM killer, a scheduler's hard stop) runs no handler and no atexit, so the children must
notice on their own: Linux's PR_SET_PDEATHSIG makes the kernel signal a child when the thread that started it
dies (`die_with_parent` for a single process, `group_guarded` for a service with children of its own).
Whatever still outlives a run (a /dev/shm segment of Triton's Python backend, a private backend folder)
carries the pid of the run that made it in its name, and `sweep` removes those whose run is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
TRITON_WORKDIR_PREFIX = "emoframe-triton-"  # + "<pid>-<random>" in the temp folder
SHM_PREFIX = "emoframe"  # + "<pid>_<random>_" for Triton's Python-backend regions in /dev/shm
_OWNED = re.compile(rf"^(?:{TRITON_WORKDIR_PREFIX}|{SHM_PREFIX})(\d+)[-_]")


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen: the child gets ``sig`` when this process dies, however it dies.

    Only from the main thread, and on Linux (see _can_guard); elsewhere this does nothing and the stop hooks
    (signal handlers, atexit) are what stops the child."""
    parent = os.getpid()
    if not _can_guard():
        return lambda: None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), sig)

    return preexec


# Runs a service as its child and, when the process that started the guard dies (the kernel's parent-death
# signal, SIGUSR1 here), SIGKILLs its whole process group: the service and whatever it started (Triton's
# backend stubs survive a killed server otherwise). A stop that signals the group reaches the service; the
# guard waits for it and exits with its status. Handlers, unlike ignored signals, reset on exec, so the
# service gets default signal handling.
_GUARD = """
import ctypes, os, signal, subprocess, sys
def parent_died(signum, frame):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGUSR1, parent_died)
ctypes.CDLL(None).prctl(1, signal.SIGUSR1, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    parent_died(0, None)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda signum, frame: None)
rc = subprocess.Popen(sys.argv[2:]).wait()
os._exit(rc if rc >= 0 else 128 - rc)
"""


def _can_guard() -> bool:
    """Parent-death signals fire when the forking *thread* exits: only the main thread lives as long as the
    process. Elsewhere (or off Linux) services are stopped by their owners' stop hooks alone."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def group_guarded(cmd: list[str]) -> list[str]:
    """``cmd`` run under a guard that kills its process group if this process dies. Start the result with
    ``start_new_session=True`` so the group holds the service and its children only."""
    if not _can_guard():
        return cmd
    return [sys.executable, "-S", "-c", _GUARD, str(os.getpid()), *cmd]


def exit_with_parent(sig: int = signal.SIGKILL) -> None:
    """Called in a child: it gets ``sig`` when the process (thread) that forked it dies. For the forked
    decoder of a video task, whose Ray worker may be killed (a cancelled task) while it works."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid lives (another user's counts as alive: not ours to sweep)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to sweep
        return True
    return True


def sweep(tmp: Path | None = None, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove emoframe's leftovers (Triton work folders, shared-memory segments) whose owning run is dead.
    Returns what was removed. Entries of live runs, and anything not named by emoframe, are left alone."""
    removed = []
    for folder in (tmp or Path(tempfile.gettempdir()), shm):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = _OWNED.match(entry.name)
            if not m or pid_alive(int(m.group(1))):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
            except OSError:  # another user's, or gone meanwhile
                pass
    return removed


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """End the process group that ``proc`` leads (started with start_new_session=True): SIGTERM, up to
    ``grace_s`` for a clean exit, then SIGKILL to whatever is left of the group (a stuck leader, children
    that outlived it). Idempotent: a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
