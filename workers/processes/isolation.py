"""Running one video's work in a child process that cannot hang, crash or bloat the worker.

decord is unmaintained: it can segfault, hang inside ``get_batch`` where only SIGKILL stops it, and leak
memory on large input. So the video task runs in a child forked from a clean forkserver (torch, decord
and the face networks loaded once), with:
  - a memory cap (RLIMIT_AS = the child's address space at start + ``memory_mb``) it cannot raise;
  - a stall limit: the child reports progress after every chunk; silence for ``stall_timeout_s`` -> SIGKILL;
  - an overall limit scaled from the video's frame count (``Limits.overall_s``) -> SIGKILL;
and the parent turns what happened into a reason: ``decode_stalled`` (a hang, retried), ``decode_timeout``
(the overall limit, retried on the next run, not at once), ``decode_crash`` (killed by a signal),
``too_large`` (out of memory). Bad input raised in the child comes back as BadInputError;
a Triton outage comes back as ServiceUnavailableError (the caller retries).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, cast

from emoframe.workers.spec.errors import BadInputError, Reason, ServiceUnavailableError, StorageUnavailableError
from emoframe.workers.processes.lifeline import exit_with_parent

_CTX: mp.context.ForkServerContext | None = None


class Progress(Protocol):
    """The ``progress`` an isolated function gets: ``progress(frames_done)``, with the total once known."""

    def __call__(self, n: int, total: int | None = None, /) -> None: ...


CHILD_PRELOAD = ("torch", "emoframe.workers.task.video_task", "emoframe.workers.task.segments",
                 "emoframe.workers.media.faces.preload")


def _main_module_preload() -> list[str]:
    """The process's main module, by a name the forkserver can import it under. Each child runs the main
    module again before it starts (multiprocessing's spawn preparation); with the main's imports already
    loaded in the forkserver that is cheap. In a Ray worker the main is Ray's worker script, and importing
    ray anew cost 1.2 s per video, 15 times a 24-frame clip's own work (0.08 s). ("__main__" in the preload
    list should do this, but Python 3.11 never passes the forkserver the main's path: CPython gh-126631.)"""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name:  # `python -m package.module`
        return [] if name.endswith("__main__") else [name]  # a package's __main__ is never run again
    path = getattr(main, "__file__", None)
    if not path or not path.endswith(".py"):
        return []
    script = Path(path).resolve().with_suffix("")
    for entry in sys.path:  # the name that `import` finds it under (the script's folder is usually first)
        try:
            parts = script.relative_to(Path(entry or ".").resolve()).parts
        except ValueError:
            continue
        if all(part.isidentifier() for part in parts):
            return [".".join(parts)]
    return []


def _context() -> mp.context.ForkServerContext:
    global _CTX
    if _CTX is None:
        ctx = mp.get_context("forkserver")
        # Imported once in the forkserver, so each child starts in milliseconds instead of seconds.
        ctx.set_forkserver_preload([*CHILD_PRELOAD, *_main_module_preload()])
        _CTX = ctx
    return _CTX


def start_forkserver() -> None:
    """Start this process's forkserver now instead of at its first video. Its imports take about 2 s of a
    core, which a one-video run paid before its video's first frame; a Ray worker runs this as it starts
    (``WORKER_SETUP_HOOK``, in the run's runtime env), while the run starts Triton. Returns at once: the
    forkserver imports in its own process."""
    from multiprocessing import forkserver

    _context()  # the preload list
    forkserver.ensure_running()


WORKER_SETUP_HOOK = f"{__name__}.start_forkserver"


@dataclass(frozen=True)
class Limits:
    """What a video may take. The overall limit scales with the video: ``frames / min_fps`` (never below
    ``min_timeout_s``), unless ``timeout_s`` fixes it; a 2-hour 30 fps video gets 30 h at 2 frames/s, where
    the measured face pipeline runs at 17-25 frames/s on one core."""

    min_fps: float = 2.0  # slowest throughput accepted over a whole video
    min_timeout_s: float = 600.0  # floor of the scaled limit (start-up, probing, short clips)
    timeout_s: float | None = None  # a fixed overall limit instead of the scaled one
    stall_timeout_s: float = 120.0  # no progress report for this long = hung
    memory_mb: int = 4096  # address space the child may add on top of what it starts with

    def __post_init__(self) -> None:
        if self.min_fps <= 0 or (self.timeout_s is not None and self.timeout_s <= 0) or self.stall_timeout_s <= 0:
            raise ValueError("video limits must be positive: --min-fps, --video-timeout")

    def overall_s(self, frames: int | None) -> float:
        """The overall limit for a video of ``frames`` frames (None: not known yet)."""
        if self.timeout_s is not None:
            return self.timeout_s
        return max(self.min_timeout_s, (frames or 0) / self.min_fps)

    def describe_overall(self, frames: int | None) -> str:
        if self.timeout_s is not None:
            return f"the --video-timeout of {self.timeout_s:g} s"
        return (f"{self.overall_s(frames):.0f} s ({frames} frames at --min-fps {self.min_fps:g}, at least "
                f"{self.min_timeout_s:g} s)")


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(conn: Connection, fn: Callable[..., Any], args: tuple, memory_mb: int) -> None:
    os.setpgrp()  # its own group: a kill reaches anything it started
    exit_with_parent()  # own group, so a kill of the task's group misses it: die with the forking process
    cap = _vm_size_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def send(*message: Any) -> None:
        try:
            conn.send(message)
        except (BrokenPipeError, ConnectionResetError):  # the task is gone (cancelled, killed): nobody to tell
            os._exit(1)

    def progress(n: int, total: int | None = None) -> None:
        send("progress", n, total)

    try:
        send("ok", fn(*args, progress=progress))
    except BadInputError as exc:
        send("bad", exc.reason, exc.message)
    except ServiceUnavailableError as exc:
        send("unavailable", isinstance(exc, StorageUnavailableError), str(exc))
    except MemoryError:
        send("bad", "too_large", f"needed more than the {memory_mb} MB memory cap")
    except BaseException as exc:  # noqa: BLE001 -- everything else goes back to the parent, typed
        send("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5))
    finally:
        conn.close()


def _kill(proc: mp.process.BaseProcess) -> None:
    try:
        os.killpg(cast(int, proc.pid), signal.SIGKILL)  # started before any kill: it has a pid
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.join(5)


def run_isolated(fn: Callable[..., Any], args: tuple, limits: Limits = Limits(),
                 on_progress: Callable[[int, int | None], None] | None = None) -> Any:
    """``fn(*args, progress=callback)`` in a child process under ``limits``; returns its result or raises.
    The child's progress reports reach ``on_progress(n, total)`` here, in the caller's process."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, limits.memory_mb), daemon=True)
    proc.start()
    child.close()
    start = last = time.monotonic()
    frames: int | None = None  # the video's length, once the child has probed it
    try:
        while True:
            now = time.monotonic()
            wait = min(limits.stall_timeout_s - (now - last), limits.overall_s(frames) - (now - start))
            if wait <= 0 or not parent.poll(wait):
                now = time.monotonic()
                _kill(proc)
                if now - last >= limits.stall_timeout_s:
                    raise BadInputError(Reason.DECODE_STALLED, f"no progress for {limits.stall_timeout_s:g} s: the "
                                                          "decoder hung; killed")
                raise BadInputError(Reason.DECODE_TIMEOUT, f"still working after {limits.describe_overall(frames)}; "
                                                      "killed. Raise the limit with --video-timeout SECONDS or "
                                                      "a lower --min-fps; the next run tries again")
            try:
                msg = parent.recv()
            except EOFError:  # the child died without a word: a crash (segfault, abort) or the OOM killer
                proc.join(5)
                code = proc.exitcode
                if code is not None and code < 0 and -code == signal.SIGKILL:
                    raise BadInputError(Reason.TOO_LARGE, "the decoder was killed (out of memory?)") from None
                name = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
                raise BadInputError(Reason.DECODE_CRASH, f"the decoder process died ({name})") from None
            kind = msg[0]
            if kind == "progress":
                last = time.monotonic()
                frames = msg[2] if msg[2] is not None else frames
                if on_progress is not None:
                    on_progress(msg[1], msg[2])
                continue
            proc.join(10)
            if kind == "ok":
                return msg[1]
            if kind == "bad":
                raise BadInputError(msg[1], msg[2])
            if kind == "unavailable":
                raise (StorageUnavailableError if msg[1] else ServiceUnavailableError)(msg[2])
            raise RuntimeError(f"video task failed: {msg[1]}\n{msg[2]}")
    finally:
        if proc.is_alive():
            _kill(proc)
        parent.close()
