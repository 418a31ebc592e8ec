"""Progress of one video while it is labelled: frames done, frames/s and time left, where the user looks.

In a Ray worker the bar is Ray's tqdm (ray.experimental.tqdm_ray), which the driver draws in its terminal
beside the other workers' bars; outside Ray it is a plain tqdm bar on stderr. Under a Prefect task run it is
also a Prefect progress artifact (the task's page in the UI shows the percentage). The isolated child's
progress reports (the watchdog's heartbeat, one per chunk) drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

ARTIFACT_EVERY_S = 5.0  # a Prefect API call per update: a few per minute is plenty


def _bar(desc: str) -> Any:
    try:
        import ray

        in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # no Ray, or not set up in this process
        in_worker = False
    if in_worker:
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return ray_tqdm(desc=desc, total=None, unit="frame")
    from tqdm import tqdm

    return tqdm(desc=desc, total=None, unit="frame", leave=False, mininterval=1.0)


def _prefect_artifact(desc: str) -> Callable[[float], None] | None:
    """An updater of a progress artifact of the current Prefect task run, or None outside one."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is None:
            return None
        artifact = create_progress_artifact(progress=0.0, description=f"frames labelled: {desc}")
    except Exception:  # no API reachable: the terminal bar is enough
        return None

    def update(pct: float) -> None:
        try:
            update_progress_artifact(artifact, progress=pct)
        except Exception:
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
        self._last_artifact = float("-inf")
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
            self._artifact(round(100.0 * self.done / self.total, 1))

    def close(self) -> None:
        if self._artifact is not None and self.total:
            self._artifact(round(100.0 * self.done / self.total, 1))
        if self._bar is not None:
            self._bar.close()
