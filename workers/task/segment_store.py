"""A segment's model inputs, kept on its node from the first wave of workers/task/segments.py to the second.

Wave 1 decodes a segment's frames to track its faces; wave 2 needs the model inputs of the same frames (face
crops, log-mel) to send the one-task run's batches. Decoding them again made a split video cost 1.4x the CPU
of one task (benchmarks/long_video.py at 662d2df: 63.7 against 45.0 CPU seconds). So wave 1 computes its own
frames' inputs while it tracks and writes them here, a chunk at a time, and wave 2 reads them back on the
same node (a segment's tasks of both waves run in the same placement-group bundle), decoding only the frames
before the segment that its first batches need.

The store saves time; it never decides a row. A file that is not there (wave 2 on another node after a
node was lost, a write that failed for want of disk, a file swept) means wave 2 decodes as it did before,
and the crops of a file are only used for the rows the joined tracks have (checked frame by frame).

Files: ``<tmp>/emoframe-segments-<uid>/<deadline>-<token>.inputs``, written as ``.part-<pid>-<token>`` and
renamed once complete. ``sweep`` (at each write) removes complete files whose deadline has passed (a run
killed between the waves) and parts whose writer is dead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emoframe.workers.media.preprocess import FaceRows, InputChunk
from emoframe.workers.processes.lifeline import pid_alive

log = logging.getLogger(__name__)

# How long a complete file outlives its writer: at least this, or twice the time its wave took (the other
# segments of the wave, of the same length, end about then; wave 2 starts after the last of them).
MIN_LINGER_S = 600.0
_SUFFIX = ".inputs"
_DONE = re.compile(rf"^(\d+)-([0-9a-f]+-\d+){re.escape(_SUFFIX)}$")
_PART = re.compile(r"^\.part-(\d+)-")


def store_root() -> Path:
    """This node's folder (per user: the temp folder may be shared)."""
    return Path(tempfile.gettempdir()) / f"emoframe-segments-{os.getuid()}"


def sweep(root: Path | None = None, now: float | None = None) -> list[str]:
    """Removes complete files past their deadline and parts of dead writers; returns their names."""
    root = root or store_root()
    now = time.time() if now is None else now
    removed = []
    try:
        names = [p.name for p in root.iterdir()]
    except FileNotFoundError:
        return []
    for name in names:
        done, part = _DONE.match(name), _PART.match(name)
        if (done and int(done.group(1)) < now) or (part and not pid_alive(int(part.group(1)))):
            try:
                (root / name).unlink()
                removed.append(name)
            except OSError:  # gone meanwhile, or another user's
                pass
    return removed


class InputWriter:
    """Wave 1's side: ``write`` each chunk of the segment's own frames in order, then ``finish``. A failed
    write (a full disk) gives up quietly: ``finish`` then returns None, and wave 2 decodes."""

    def __init__(self, name: str, root: Path | None = None):
        self.root = root or store_root()
        self.name = name  # "<token>-<segment index>"
        self.began = time.monotonic()
        self.file: BinaryIO | None = None
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            sweep(self.root)
            self.part = self.root / f".part-{os.getpid()}-{name}"
            self.file = open(self.part, "wb")
        except OSError as exc:
            log.warning("segment inputs not kept (%s): wave 2 decodes them again", exc)

    def write(self, chunk: InputChunk) -> None:
        if self.file is None:
            return
        f = chunk.faces
        try:
            for a in (np.array([chunk.start, len(chunk), len(f)], np.int64), chunk.mel, chunk.audio_mask, f.frame,
                      f.present, f.box, f.score, f.face):
                np.save(self.file, np.ascontiguousarray(a), allow_pickle=False)
        except OSError as exc:
            log.warning("segment inputs not kept (%s): wave 2 decodes them again", exc)
            self.abandon()

    def finish(self) -> str | None:
        """The complete file's path, or None if nothing was kept."""
        if self.file is None:
            return None
        try:
            self.file.close()
            self.file = None
            linger = max(MIN_LINGER_S, 2 * (time.monotonic() - self.began))
            done = self.root / f"{int(time.time() + linger) + 1}-{self.name}{_SUFFIX}"
            self.part.rename(done)
            return str(done)
        except OSError as exc:
            log.warning("segment inputs not kept (%s): wave 2 decodes them again", exc)
            self.abandon()
            return None

    def abandon(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # closing flushes the buffer: the full disk again
                self.file.close()
            self.file = None
        with contextlib.suppress(OSError):
            self.part.unlink(missing_ok=True)


def open_inputs(path: str | None) -> BinaryIO | None:
    """Wave 2's side: the file kept by wave 1 on this node, or None (then the frames are decoded)."""
    if path is None:
        return None
    try:
        return open(path, "rb")
    except OSError:
        return None


def read_inputs(file: BinaryIO, frame: np.ndarray, track: np.ndarray, start: int, stop: int) -> Iterator[InputChunk]:
    """The kept chunks of frames [start, stop), with the joined tracks' ids (``frame``, ``track``: the rows of
    the segment's frames, sorted by frame as the tracker gave them). A file that is not those rows raises."""
    at, r = start, 0
    while at < stop:
        try:
            head = np.load(file, allow_pickle=False)
        except EOFError:
            break
        c0, n, m = (int(x) for x in head)
        mel, audio_mask, rel, present, box, score, face = (np.load(file, allow_pickle=False) for _ in range(7))
        ids = track[r:r + m]
        if c0 != at or len(audio_mask) != n or len(ids) != m or not np.array_equal(frame[r:r + m], rel + c0):
            raise RuntimeError(f"segment inputs kept for frames from {c0} are not the joined faces of frames "
                               f"from {at}")
        yield InputChunk(c0, mel, audio_mask, FaceRows(rel, ids.astype(np.int32), present, box, score, face))
        at, r = c0 + n, r + m
    if at != stop or r != len(frame):
        raise RuntimeError(f"segment inputs kept up to frame {at} for a segment ending at {stop}")


def discard(path: str | None) -> None:
    if path:
        Path(path).unlink(missing_ok=True)
