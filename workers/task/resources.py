"""What one video task asks Ray for, how many tasks a run keeps in flight, and which videos share one.

Ray schedules by declared resources: a task that declares the default (1 CPU, no memory) next to a child
process that really takes most of a gigabyte lets Ray start more videos than a node can hold. The figures
below are measured by benchmarks/task_memory.py (docs/task_memory.json): a Ray worker and its isolated
decoding child peak at 1,004 MB (PSS) labelling 20 s of 720p footage in detect mode, 785 MB face-centred
(at ad03e83); the child caps itself at workers/processes/isolation.Limits.memory_mb on top of that.
"""

from __future__ import annotations

from dataclasses import dataclass

# One core: the face networks, OpenCV and torch are held to one thread each (workers/task/video_task.py).
TASK_CPUS = 1.0
# The measured peak of the worker and its child (1,004 MB), with a margin for longer videos, whose peak grows
# (1.18x for 10 minutes against 1: workers/task/video_task._limit_malloc_arenas): see the module docstring.
TASK_MEMORY_MB = 1536
QUEUED_PER_SLOT = 1  # tasks waiting behind each running one: a slot never waits on the driver to submit
# A task costs about 0.4 s of CPU besides its video (Prefect's task engine on the worker and its three state
# changes through the API, Ray's dispatch, the driver's bookkeeping: benchmarks/archive_scale.py), more than
# a 2-second clip's own labelling. So while every task slot is taken, small files wait together and go as
# one task: up to BUNDLE_MAX_VIDEOS of them, BUNDLE_MAX_BYTES in all. A file that size or larger, or of
# unknown size, goes alone; and with a slot free nothing waits.
BUNDLE_MAX_VIDEOS = 16
BUNDLE_MAX_BYTES = 8 * 2**20


@dataclass(frozen=True)
class VideoTaskResources:
    cpus: float = TASK_CPUS
    memory_mb: int = TASK_MEMORY_MB

    def ray_options(self) -> dict:
        """Keyword arguments of ray.remote for one video task."""
        return {"num_cpus": self.cpus, "memory": self.memory_mb * 2**20}

    def slots(self, cluster: dict[str, float]) -> int:
        """Videos the cluster runs at once: what its CPUs and memory (Ray's logical resources) allow."""
        by_cpu = int(cluster.get("CPU", 0) // self.cpus)
        by_memory = int(cluster.get("memory", 0) // (self.memory_mb * 2**20))
        return max(1, min(by_cpu, by_memory))

    def default_in_flight(self, room: tuple[dict[str, float], ...] = ()) -> int:
        """Videos a run keeps in flight: per video slot, the running one and QUEUED_PER_SLOT waiting. ``room``:
        what each node that takes videos has left for them (with a Triton per node, its node's CPUs and
        memory less the server's, and only nodes with a server); empty: the whole cluster's resources."""
        if room:
            slots = sum(self.slots(node) for node in room)
        else:
            import ray

            slots = self.slots(ray.cluster_resources())
        return slots * (1 + QUEUED_PER_SLOT)

    @staticmethod
    def bundles(size_bytes: int | None) -> bool:
        """Whether a file this size may share a task with other small ones."""
        return size_bytes is not None and size_bytes < BUNDLE_MAX_BYTES

    def describe(self) -> str:
        return f"{self.cpus:g} CPU and {self.memory_mb} MB"


def video_task_resources() -> VideoTaskResources:
    return VideoTaskResources()
