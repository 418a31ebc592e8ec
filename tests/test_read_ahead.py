"""read_ahead (workers/media/read_ahead.py): the next chunk is made while the caller holds this one, never more
than one ahead; errors arrive at the item they stopped at; stopping early stops the thread and closes the source."""

from __future__ import annotations

import threading

import pytest

from emoframe.workers.media.read_ahead import read_ahead

WAIT_S = 10.0  # a generous bound: a broken read-ahead fails the test instead of hanging it


class Source:
    """A generator-like source that records how far it has gone and whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at = n, fail_at
        self.started: list[threading.Event] = [threading.Event() for _ in range(n + 1)]
        self.made = 0
        self.closed = threading.Event()
        self.threads: set[str] = set()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        self.threads.add(threading.current_thread().name)
        k = self.made
        self.started[k].set()
        if k == self.fail_at:
            raise ValueError(f"bad chunk {k}")
        if k == self.n:
            raise StopIteration
        self.made += 1
        return k

    def close(self) -> None:
        self.closed.set()


def test_items_come_in_order_and_the_next_is_made_while_the_caller_holds_this_one():
    src = Source(5)
    got = []
    for k in read_ahead(src):
        got.append(k)
        if k < 4:
            # The caller still holds item k: the thread must already be making k + 1.
            assert src.started[k + 1].wait(WAIT_S), f"item {k + 1} not started while {k} was held"
        assert src.made <= k + 2  # never more than one ahead of what the caller holds
    assert got == [0, 1, 2, 3, 4]
    assert src.threads == {"read-ahead"}  # made in the thread, never in the caller's
    assert src.closed.wait(WAIT_S)


def test_an_error_of_the_source_is_raised_at_its_item():
    src = Source(5, fail_at=2)
    got = []
    with pytest.raises(ValueError, match="bad chunk 2"):
        for k in read_ahead(src):
            got.append(k)
    assert got == [0, 1]
    assert src.closed.wait(WAIT_S)


def test_stopping_early_stops_the_thread_and_closes_the_source():
    src = Source(100)
    before = {t.ident for t in threading.enumerate()}
    it = read_ahead(src, name="early-stop")
    assert next(it) == 0
    assert next(it) == 1
    it.close()
    assert src.closed.is_set()  # closed by the time close() returns: the thread was joined
    assert src.made <= 3
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "early-stop"]


def test_a_generator_source_is_closed_in_the_thread_that_ran_it():
    where: list[str] = []

    def frames():
        try:
            yield from range(10)
        finally:
            where.append(threading.current_thread().name)

    it = read_ahead(frames(), name="decoder")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert where == ["decoder"]
