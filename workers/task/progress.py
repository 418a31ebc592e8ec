"""Progress of one video while it is labelled: frames done, frames/s and time left, where the user looks.

In a Ray worker it is a line every ``LINE_EVERY_S`` (``clip.mp4: 512/4,320 frames, 23.1 frames/s, 2 min 45 s
left``), which Ray forwards to the driver's terminal and log with the worker's prefix: plain lines survive a
log file and a `ray job` log, where Ray's own tqdm bars were not drawn under Prefect's flow. Outside Ray it is
a tqdm bar on stderr. Under a Prefect task run a video that takes longer than ``ARTIFACT_EVERY_S`` is also a
Prefect progress artifact (the task's page in the UI shows the percentage). The isolated child's progress
reports (one per chunk of frames) drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

ARTIFACT_EVERY_S = 5.0  # a Prefect API call per update: a few per minute is plenty
LINE_EVERY_S = 15.0  # a line in the driver's terminal per video in flight: often enough to see it move


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


class LineProgress:
    """A progress line now and then, on stdout: what a bar is where no terminal draws bars."""

    def __init__(self, desc: str, every_s: float = LINE_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.desc, self.every_s, self.clock, self.write = desc, every_s, clock, write
        self.total: int | None = None
        self.n = 0
        self.started = clock()
        self.last = self.started

    def line(self) -> str:
        took = max(self.clock() - self.started, 1e-9)
        rate = self.n / took
        of = f"/{self.total:,}" if self.total else ""
        left = f", {_duration((self.total - self.n) / rate)} left" if self.total and self.n < self.total and rate > 0 \
            else ""
        return f"{self.desc}: {self.n:,}{of} frames, {rate:.1f} frames/s{left}"

    def update(self, k: int) -> None:
        self.n += k
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self.write(self.line())

    def close(self) -> None:
        pass  # the finished video's own line follows in the driver


def _bar(desc: str) -> Any:
    try:
        import ray

        in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # no Ray, or not set up in this process
        in_worker = False
    if in_worker:
        return LineProgress(desc)
    from tqdm import tqdm

    return tqdm(desc=desc, total=None, unit="frame", leave=False, mininterval=1.0)


def _prefect_artifact(desc: str) -> Callable[[float], None] | None:
    """An updater of a progress artifact of the current Prefect task run, or None outside one. The artifact
    is made at the first update: a video labelled within ARTIFACT_EVERY_S never costs the API a call."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is None:
            return None
    except Exception:  # no Prefect: the terminal bar is enough
        return None
    artifact: list = []

    def update(pct: float) -> None:
        try:
            if not artifact:
                artifact.append(create_progress_artifact(progress=pct, description=f"frames labelled: {desc}"))
            else:
                # Prefect types its sync-or-async call UUID | Coroutine; called from sync code it is a UUID.
                update_progress_artifact(artifact[0], progress=pct)
        except Exception:  # no API reachable: the terminal bar is enough
            pass

    return update


class VideoProgress:
    """``progress(frames_done, total_frames)``, as the isolated child reports it; ``close()`` at the end."""

    def __init__(self, name: str, *, bar: Any = None, artifact: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self._bar = bar
        self._artifact = artifact
        self._clock = clock
        self._last_artifact = clock()  # the first update one period in: short videos make no artifact
        self._artifact_shown = False
        self.total: int | None = None
        self.done = 0

    @classmethod
    def shown(cls, name: str) -> VideoProgress:
        """Drawn where this process's output goes (Ray's driver, or this terminal), and in Prefect."""
        return cls(name, bar=_bar(name[-40:]), artifact=_prefect_artifact(name))

    def __call__(self, n: int, total: int | None = None) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if n > self.done and self._bar is not None:
            self._bar.update(n - self.done)
        self.done = max(self.done, n)
        now = self._clock()
        if self._artifact is not None and self.total and now - self._last_artifact >= ARTIFACT_EVERY_S:
            self._last_artifact = now
            self._artifact_shown = True
            self._artifact(round(100.0 * self.done / self.total, 1))

    def close(self) -> None:
        if self._artifact is not None and self._artifact_shown and self.total:
            self._artifact(round(100.0 * self.done / self.total, 1))
        if self._bar is not None:
            self._bar.close()
