"""The store that carries a segment's model inputs from wave 1 to wave 2 on a node (workers/task/segment_store.py):
what it reads back is what was written, checked against the joined faces; what is left behind is swept; a
write that fails leaves nothing and says so."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from emoframe.workers.media.preprocess import FaceRows, InputChunk
from emoframe.workers.task.segment_store import InputWriter, open_inputs, read_inputs, sweep


def chunk(start: int, n: int, faces_at: list[int], rng) -> InputChunk:
    """A chunk of ``n`` frames with a face at each frame (chunk-relative) of ``faces_at``."""
    m = len(faces_at)
    rows = FaceRows(np.array(faces_at, np.int32), np.full(m, 7, np.int32), np.ones(m, bool),
                    rng.random((m, 4), np.float32), rng.random(m, np.float32),
                    rng.integers(0, 255, (m, 8, 8, 3), np.uint8))
    return InputChunk(start, rng.random((n, 2, 3), np.float32), rng.random(n) > 0.5, rows)


def test_chunks_read_back_as_written_with_the_joined_track_ids(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [chunk(64, 32, [0, 0, 5, 31], rng), chunk(96, 32, [], rng), chunk(128, 16, [3], rng)]
    w = InputWriter("ab12-1", tmp_path)
    for c in chunks:
        w.write(c)
    path = w.finish()
    assert path is not None and [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]
    frame = np.array([64, 64, 69, 95, 131], np.int32)
    track = np.array([3, 4, 3, 3, 9], np.int32)  # the one-task ids, not the segment's own 7
    back = list(read_inputs(open_inputs(path), frame, track, 64, 144))
    assert [c.start for c in back] == [64, 96, 128]
    for a, b in zip(chunks, back):
        np.testing.assert_array_equal(a.mel, b.mel)
        np.testing.assert_array_equal(a.audio_mask, b.audio_mask)
        for field in ("frame", "present", "box", "score", "face"):
            np.testing.assert_array_equal(getattr(a.faces, field), getattr(b.faces, field))
    assert np.concatenate([c.faces.track for c in back]).tolist() == track.tolist()


def test_inputs_of_other_faces_than_the_joined_ones_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    w = InputWriter("ab12-2", tmp_path)
    w.write(chunk(0, 32, [0, 4], rng))
    path = w.finish()
    with pytest.raises(RuntimeError, match="not the joined faces"):
        list(read_inputs(open_inputs(path), np.array([0, 5], np.int32), np.zeros(2, np.int32), 0, 32))
    with pytest.raises(RuntimeError, match="ending at 64"):  # the file stops short of the segment
        list(read_inputs(open_inputs(path), np.array([0, 4], np.int32), np.zeros(2, np.int32), 0, 64))


def test_a_missing_file_reads_as_none():
    assert open_inputs(None) is None
    assert open_inputs("/nonexistent/1-ab-0.inputs") is None


def test_sweep_removes_files_past_their_deadline_and_parts_of_dead_writers(tmp_path):
    now = time.time()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now
    names = {f"{int(now) - 5}-aa-0.inputs": True,  # past its deadline
             f"{int(now) + 600}-aa-1.inputs": False,  # wave 2 may still come for it
             f".part-{dead.pid}-aa-2": True,  # its writer is gone
             f".part-{os.getpid()}-aa-3": False}  # being written
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert sorted(sweep(tmp_path, now)) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)


def test_a_write_that_fails_keeps_nothing(tmp_path, caplog):
    """A full disk, as /dev/full: the writer gives up, removes its part and answers None (wave 2 decodes)."""
    rng = np.random.default_rng(2)
    w = InputWriter("ab12-3", tmp_path)
    w.file.close()
    w.file = open("/dev/full", "wb")
    w.write(chunk(0, 256, list(range(256)), rng))
    assert w.finish() is None
    assert list(tmp_path.iterdir()) == []
    assert "wave 2 decodes them again" in caplog.text
