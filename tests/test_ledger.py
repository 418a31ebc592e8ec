"""What counts as done, files recognised under a new name, and pruning: the ledger and the output upkeep
around it, on real files and real Parquet output (no services needed)."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoframe.flows.archive.ledger import DoneKey, Ledger, read_ledger
from emoframe.flows.archive.moves import adopt_labels, find_gone, fingerprinted, prune
from emoframe.flows.run.records import record_skipped
from emoframe.workers.spec.contract import fingerprint
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.spec.schema import FRAMES_SCHEMA, frames_path, videos_path
from emoframe.workers.output.sink import video_row, videos_table, write_atomic
from emoframe.workers.output.storage import FINGERPRINT_SPAN, content_fingerprint
from emoframe.workers.task.video_job import Source
from pyarrow import fs as pafs

KEY = DoneKey("detect", POLICY, fingerprint())
VERSION = "3"


def _frames(uri: str, n: int) -> pa.Table:
    from emoframe.workers.spec.schema import video_id

    rows = [{"video_id": video_id(uri), "source_uri": uri, "frame_index": i, "timestamp_s": i / 10,
             "face_present": True, "faces_detected": 1, "audio_present": False, "label": "Happiness", "label_id": 4,
             "model_name": "m", "run_id": "old-run"} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)


def _labelled(out, src: Source, n: int = 5, key: DoneKey = KEY) -> None:
    fs = pafs.LocalFileSystem()
    write_atomic(_frames(src.uri, n), fs, frames_path(str(out), VERSION, src.uri))
    row = video_row(src.uri, status="labelled", model_name="m", run_id="old-run", started_at=datetime.now(timezone.utc),
                    size_bytes=src.size_bytes, source_mtime=src.mtime, content_hash=src.content_hash,
                    frame_count=n, face_mode=key.face_mode, policy=key.policy, contract=key.contract)
    write_atomic(videos_table([row]), fs, videos_path(str(out), VERSION, src.uri))


def _source(path) -> Source:
    st = os.stat(path)
    return Source(str(path), st.st_size, str(st.st_mtime_ns), content_fingerprint(str(path)))


@pytest.fixture
def video(tmp_path):
    p = tmp_path / "in" / "a.mp4"
    p.parent.mkdir()
    p.write_bytes(os.urandom(3 * FINGERPRINT_SPAN))  # content only: nothing here decodes it
    return p


def test_done_only_when_unchanged_and_made_the_same_way(tmp_path, video):
    src = _source(video)
    _labelled(tmp_path / "out", src)
    ledger = read_ledger(str(tmp_path / "out"), VERSION)
    assert ledger.is_done(src, KEY)
    assert not ledger.is_done(Source(src.uri, src.size_bytes, "another mtime"), KEY)
    assert not ledger.is_done(src, DoneKey("centred", POLICY, KEY.contract))
    assert not ledger.is_done(src, DoneKey("detect", LabellingPolicy(audio=not POLICY.audio), KEY.contract))
    assert not ledger.is_done(src, DoneKey("detect", POLICY, "another contract"))
    assert read_ledger(str(tmp_path / "out"), "4").rows == {}  # another model version: nothing done


def test_a_row_written_before_the_contract_was_recorded_is_labelled_again(video):
    src = _source(video)
    row = {"source_uri": src.uri, "size_bytes": src.size_bytes, "source_mtime": src.mtime, "status": "labelled",
           "error_reason": None, "face_mode": "detect", "stride": POLICY.stride, "vote_seconds": POLICY.vote_seconds,
           "audio_used": POLICY.audio, "contract": None, "content_hash": None}
    assert not Ledger({src.uri: row}).is_done(src, KEY)
    assert Ledger({src.uri: {**row, "contract": KEY.contract}}).is_done(src, KEY)


def test_failures_of_the_file_stay_done_and_are_reported_transient_ones_are_retried(video):
    src = _source(video)
    row = {"source_uri": src.uri, "size_bytes": src.size_bytes, "source_mtime": src.mtime, "status": "failed",
           "face_mode": None, "stride": None, "vote_seconds": None, "audio_used": None, "contract": None,
           "content_hash": None}
    bad = Ledger({src.uri: {**row, "error_reason": "not_a_video"}})
    assert bad.is_done(src, KEY) and bad.earlier_failure(src, KEY)["error_reason"] == "not_a_video"
    for reason in ("triton_unavailable", "storage_unavailable", "internal_error", "decode_timeout", "not_found"):
        assert not Ledger({src.uri: {**row, "error_reason": reason}}).is_done(src, KEY), reason


def test_fingerprint_sees_size_and_both_ends_and_not_the_name(tmp_path, video):
    copy = tmp_path / "copy.mkv"
    copy.write_bytes(video.read_bytes())
    assert content_fingerprint(str(copy)) == content_fingerprint(str(video))
    data = bytearray(video.read_bytes())
    for where in (0, len(data) - 1):
        changed = bytearray(data)
        changed[where] ^= 1
        copy.write_bytes(bytes(changed))
        assert content_fingerprint(str(copy)) != content_fingerprint(str(video)), where
    copy.write_bytes(bytes(data) + b"\0")
    assert content_fingerprint(str(copy)) != content_fingerprint(str(video))
    small = tmp_path / "small.mp4"
    small.write_bytes(b"x" * 100)
    assert content_fingerprint(str(small)).startswith("100:")


def test_a_moved_file_takes_its_labels_along_and_leaves_no_copy_behind(tmp_path, video):
    out = tmp_path / "out"
    old = _source(video)
    _labelled(out, old, n=7)
    moved = video.parent / "sub" / "renamed.mp4"
    moved.parent.mkdir()
    video.rename(moved)
    new = fingerprinted([Source(str(moved), old.size_bytes, "new mtime")])[0]
    ledger = read_ledger(str(out), VERSION)
    assert not ledger.is_done(new, KEY)
    same = ledger.same_content(new.content_hash, KEY, new.uri)
    assert same is not None and same["source_uri"] == old.uri
    assert adopt_labels(str(out), VERSION, same, new, "new-run") is True
    frames = pq.read_table(frames_path(str(out), VERSION, new.uri))
    assert frames.num_rows == 7 and set(frames["source_uri"].to_pylist()) == {new.uri}
    assert set(frames["run_id"].to_pylist()) == {"old-run"}  # where the labels were computed
    assert not os.path.exists(frames_path(str(out), VERSION, old.uri))
    assert not os.path.exists(videos_path(str(out), VERSION, old.uri))
    again = read_ledger(str(out), VERSION)
    assert list(again.rows) == [new.uri] and again.is_done(new, KEY)
    assert again.rows[new.uri]["run_id"] == "new-run"


def test_a_copy_reuses_the_labels_and_keeps_the_original(tmp_path, video):
    out = tmp_path / "out"
    old = _source(video)
    _labelled(out, old)
    copy = video.parent / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    new = fingerprinted([Source(str(copy), old.size_bytes, "m")])[0]
    same = read_ledger(str(out), VERSION).same_content(new.content_hash, KEY, new.uri)
    assert adopt_labels(str(out), VERSION, same, new, "new-run") is False
    assert sorted(read_ledger(str(out), VERSION).rows) == sorted([old.uri, new.uri])
    assert os.path.exists(frames_path(str(out), VERSION, old.uri))


def test_labels_made_another_way_are_not_reused(tmp_path, video):
    out = tmp_path / "out"
    _labelled(out, _source(video), key=DoneKey("centred", POLICY, KEY.contract))
    copy = video.parent / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    new = fingerprinted([Source(str(copy), 1, "m")])[0]
    assert read_ledger(str(out), VERSION).same_content(new.content_hash, KEY, new.uri) is None


def test_prune_lists_first_and_removes_only_sources_that_are_gone(tmp_path, video):
    out = tmp_path / "out"
    keep, gone = _source(video), video.parent / "gone.mp4"
    gone.write_bytes(b"y" * 1000)
    gone_src = _source(gone)
    _labelled(out, keep)
    _labelled(out, gone_src)
    gone.unlink()
    listed = find_gone(str(out))
    assert [(g.source_uri, g.model_version, g.status) for g in listed] == [(str(gone), VERSION, "labelled")]
    assert os.path.exists(frames_path(str(out), VERSION, str(gone)))  # listing removes nothing
    prune(str(out), listed)
    assert not os.path.exists(frames_path(str(out), VERSION, str(gone)))
    assert list(read_ledger(str(out), VERSION).rows) == [keep.uri]
    assert os.path.exists(frames_path(str(out), VERSION, keep.uri))
    with pytest.raises(FileNotFoundError):
        find_gone(str(tmp_path / "nothing here"))


def test_skipped_rows_are_written_once_and_a_labelled_file_turned_bad_loses_its_frames(tmp_path, video):
    out = tmp_path / "out"
    src = _source(video)
    _labelled(out, src)
    notes = str(video.parent / "notes.txt")
    skipped = {notes: "not_a_video: .txt extension", src.uri: "not_a_video: no known container signature (00)"}
    record_skipped(skipped, read_ledger(str(out), VERSION), str(out), VERSION, "m", "run-1")
    rows = read_ledger(str(out), VERSION).rows
    assert {u: (r["status"], r["error_reason"]) for u, r in rows.items()} == {
        notes: ("skipped", "not_a_video"), src.uri: ("skipped", "not_a_video")}
    assert not os.path.exists(frames_path(str(out), VERSION, src.uri))  # no stale labels beside the row
    before = os.stat(videos_path(str(out), VERSION, notes)).st_mtime_ns
    record_skipped(skipped, read_ledger(str(out), VERSION), str(out), VERSION, "m", "run-2")
    assert os.stat(videos_path(str(out), VERSION, notes)).st_mtime_ns == before  # not rewritten every run


def test_labels_whose_output_vanished_meanwhile_are_not_reused(tmp_path, video):
    out = tmp_path / "out"
    old = _source(video)
    _labelled(out, old)
    ledger = read_ledger(str(out), VERSION)  # read before a concurrent prune removed the output
    os.remove(frames_path(str(out), VERSION, old.uri))
    copy = video.parent / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    new = fingerprinted([Source(str(copy), old.size_bytes, "m")])[0]
    same = ledger.same_content(new.content_hash, KEY, new.uri)
    assert adopt_labels(str(out), VERSION, same, new, "r") is None  # labelled afresh instead
    assert not os.path.exists(videos_path(str(out), VERSION, new.uri))

