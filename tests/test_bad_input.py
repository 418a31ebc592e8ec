"""A corpus of awkward and broken files: each ends labelled (right frame count, right masks) or as a
failed row with a reason a person understands, and the run completes. Real files, real parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from emoframe.flows.run.label_archive import run_label_archive
from emoframe.flows.analysis.query import connect
from tests.bad_corpus import FASTSTART_FRAMES, FPS, LATE_AUDIO_S, VFR_PTS
from tests.reliability import record

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # Written in a fresh process: once decord is imported, its own bundled libavcodec shadows PyAV's and
    # encoders PyAV has (libvpx-vp9) fail to open.
    d = tmp_path_factory.mktemp("bad") / "in"
    res = subprocess.run([sys.executable, "-m", "tests.bad_corpus", str(d)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return d, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    d, _ = corpus
    out = tmp_path_factory.mktemp("bad_out") / "labels"
    return out, run_label_archive([str(d)], str(out))


def _rows(out):
    con = connect(str(out))
    return {r[0]: r[1:] for r in con.sql(
        "SELECT source_uri, status, error_reason, error_message, frame_count FROM videos").fetchall()}


def test_every_file_is_labelled_failed_or_skipped_with_a_reason_and_none_twice(run, corpus):
    d, expect = corpus
    out, result = run
    rows = _rows(out)
    named = {os.path.normpath(d / k): v for k, v in expect.items()}  # "sub/../dotdot.mp4" as the listing names it
    assert sorted(rows) == sorted(named)  # every file the run saw, each once (the `self -> .` loop included)
    for uri, want in named.items():
        status, reason, message, frames = rows[uri]
        if want == "labelled":
            assert status == "labelled", (uri, reason, message)
        elif want.startswith("skipped: "):
            assert (status, reason) == ("skipped", want.removeprefix("skipped: ")), (uri, status, reason, message)
        else:
            assert status == "failed" and reason == want and message, (uri, status, reason)
        outcome = f"labelled, {frames} frames" if status == "labelled" else f"{status}: `{reason}`"
        record("input", f"`{Path(uri).name}`" + (f": {CASES[Path(uri).name]}" if Path(uri).name in CASES else ""),
               outcome)
    assert any("a link back to a folder already listed" in line for line in result["text"].splitlines())
    assert result["labelled"] == sum(v == "labelled" for v in expect.values())
    assert "zzzz" in rows[str(d / "unknown codec.mp4")][2]  # the codec FFmpeg names, for the user to look up
    assert result["problems"] > 0  # failed and video-named skipped files: `emoframe label` exits 1


# What a file name alone does not say, for the README's reliability table.
CASES = {"truncated.mp4": "an MP4 cut at a third, before its index", "truncated faststart.mp4":
         "a faststart MP4 cut at 60%", "edit list.mp4": "an edit list hides its first 3 frames",
         "unknown codec.mp4": "a codec FFmpeg does not know", "loop.mp4": "a symlink to itself",
         "gone.mp4": "a symlink to a deleted file", "pipe.mp4": "a FIFO", "zz second name.mp4":
         "a symlink to another video in the folder", "late audio.mp4": "audio starting 2 s after the video",
         "late audio.mkv": "audio starting 2 s after the video",
         "rotated.mp4": "turned a quarter by its track header (applied)"}


def _shown(path: str) -> int:
    """Frames FFmpeg displays (`ffmpeg -i f -f null -`): edit lists applied, a cut-short tail missing."""
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def test_labelled_files_have_one_row_per_displayed_frame_and_right_masks(run, corpus):
    d, expect = corpus
    out, _ = run
    con = connect(str(out))
    counts = dict(con.sql("SELECT source_uri, count(DISTINCT frame_index) FROM frames GROUP BY 1").fetchall())
    declared = {r[0]: r[1:] for r in con.sql("SELECT source_uri, frame_count, frames_expected FROM videos "
                                             "WHERE status = 'labelled'").fetchall()}
    for name, want in expect.items():
        if want != "labelled":
            continue
        uri = str((d / name).resolve())
        assert counts[uri] == declared[uri][0] == _shown(uri), name
        if name.endswith((".mkv", ".webm", ".ts")):  # no frame count in these containers
            assert declared[uri][1] is None, name
        elif name != "truncated faststart.mp4":
            assert declared[uri][1] == counts[uri], name
    cut = str(d / "truncated faststart.mp4")
    assert declared[cut][1] == FASTSTART_FRAMES and 0 < counts[cut] < FASTSTART_FRAMES
    assert counts[str(d / "edit list.mp4")] == 37  # 40 in the index, 3 hidden by the edit list
    masks = dict(con.sql("SELECT source_uri, bool_or(audio_present) FROM frames GROUP BY 1").fetchall())
    assert masks[str(d / "no audio track.mp4")] is False and masks[str(d / "h264 with audio.mp4")] is True


@pytest.mark.parametrize("name", ["late audio.mp4", "late audio.mkv"])
def test_audio_that_starts_late_is_absent_until_it_starts(run, corpus, name):
    d, _ = corpus
    out, _ = run
    rows = connect(str(out)).sql(f"SELECT DISTINCT frame_index, timestamp_s, audio_present FROM frames "
                                 f"WHERE source_uri = '{d / name}' ORDER BY 1").fetchall()
    start = int(LATE_AUDIO_S * FPS)  # the first frame shown once the track has started
    assert [r[2] for r in rows] == [i >= start - 1 for i in range(len(rows))] or \
        [r[2] for r in rows] == [i >= start for i in range(len(rows))]  # one frame of slack at the start
    assert rows[start][1] == pytest.approx(LATE_AUDIO_S, abs=1e-3)


def test_variable_frame_rate_timestamps_come_from_the_container(run, corpus):
    d, _ = corpus
    out, _ = run
    ts = connect(str(out)).sql("SELECT timestamp_s FROM frames WHERE source_uri LIKE '%variable frame rate.mp4' "
                               "ORDER BY frame_index").fetchnumpy()["timestamp_s"]
    np.testing.assert_allclose(ts, np.array(VFR_PTS) / 30, atol=2e-3)


def test_no_output_lands_outside_the_destination(run):
    out, _ = run
    files = [p for p in out.parent.rglob("*") if p.is_file()]
    assert files and all(out in p.parents for p in files)
    names = [p.name for p in (out / "frames").rglob("*.parquet")]
    assert all(n.isascii() and ".." not in n and " " not in n for n in names)
