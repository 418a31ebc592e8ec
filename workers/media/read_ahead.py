"""Decode the next chunk of frames while the caller works on this one.

A video task's time is decoding plus what follows it (face tracking, alignment, batching), one after the
other on one thread. decord, PyAV, OpenCV and torch all release the GIL in their native code, so a second
thread that decodes chunk k+1 while chunk k is tracked overlaps the two: on the 2-core machine the child of a
three-face 720p video spent 4.3 s of its 10.8 s waiting for decord.

At most two chunks are alive: the one the caller holds and the one being decoded (the producer starts the
next only once the caller has taken the last).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def read_ahead(source: Iterator[T], name: str = "read-ahead") -> Iterator[T]:
    """``source``'s items in order, each next one produced in a thread while the caller holds the current.

    An exception raised by ``source`` is raised here, at the item it stopped at. Closing this generator
    (the caller stops early or fails) stops the thread after the item it is making and closes ``source``.
    """
    handoff: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=1)
    wanted = threading.Semaphore(1)  # one permit per item the caller is ready for
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                wanted.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(source)
                except StopIteration:
                    handoff.put((_END, None))
                    return
                except BaseException as exc:  # handed to the caller, raised in its thread
                    handoff.put((_ERROR, exc))
                    return
                handoff.put((_ITEM, item))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's cleanup (its open decoder) runs in the thread that ran it

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value  # type: ignore[misc]  # an exception, by construction
            wanted.release()  # decode the next while the caller works on this one
            yield value  # type: ignore[misc]  # an item of source
    finally:
        stop.set()
        wanted.release()
        thread.join()
