"""What a video task declares to Ray, and how many videos a run keeps in flight."""

from __future__ import annotations

from emoframe.workers.task.resources import VideoTaskResources

GB = 2**30


def test_slots_are_bounded_by_cpus_and_by_memory():
    r = VideoTaskResources(cpus=1, memory_mb=1536)
    assert r.slots({"CPU": 2.0, "memory": 16 * GB}) == 2  # this machine: CPUs bind
    assert r.slots({"CPU": 64.0, "memory": 6 * GB}) == 4  # a big node with little memory for tasks
    assert r.slots({"CPU": 0.5, "memory": 16 * GB}) == 1  # never zero: a run always makes progress
    assert VideoTaskResources(cpus=0.5, memory_mb=1024).slots({"CPU": 2.0, "memory": 16 * GB}) == 4


def test_ray_options_declare_cpus_and_memory_in_bytes():
    assert VideoTaskResources(cpus=1, memory_mb=1536).ray_options() == {"num_cpus": 1, "memory": 1536 * 2**20}
