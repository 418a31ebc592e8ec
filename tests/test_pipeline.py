"""The labelling pipeline end to end with the real parts: the tritonserver binary over model_repo/, a
local Ray, the Prefect flow, real MP4 files; output read back with DuckDB. The corpus is face-centred
(synthetic and drawn faces), labelled with --faces centred; raw footage is in test_real_footage.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import decord
from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO, run_label_archive
from emoframe.flows.analysis.query import connect
from tests.media import write_video
from emoframe.training.synth import make_video
from emoframe.workers.spec.contract import CLASSES, fingerprint
from emoframe.workers.spec.schema import FRAMES_SCHEMA, PROB_COLUMNS, SCHEMA_VERSION, VIDEOS_SCHEMA

pytestmark = pytest.mark.integration

FPS = 15
BLANK = range(20, 35)  # face-absent stretch in the hand-made clip
SILENT_S = (1.0, 2.0)
# The corpus's run. Audio on: the synthetic tones are what the audio branch learned, and the audio-only path
# (labels where a face is missing but sound is not) is part of what it checks.
SETTINGS = {"face_mode": "centred", "audio": True, "vote_seconds": 0.4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = root / "in"
    (src / "synth").mkdir(parents=True)
    synth = root / "synth_set"
    (synth / "videos").mkdir(parents=True)
    (synth / "annotations").mkdir()
    recs = [make_video(synth, 21, i, min_seconds=4, max_seconds=6, no_audio_fraction=0.0) for i in range(2)]
    recs.append(make_video(synth, 21, 2, min_seconds=3, max_seconds=4, no_audio_fraction=1.0))  # no audio track
    for r in recs:
        shutil.copy(synth / "videos" / f"{r.id}.mp4", src / "synth" / f"{r.id}.mp4")
    write_video(src / "face gap.mp4", 60, FPS, audio_seconds=4.0, blank=BLANK, silent=SILENT_S)
    write_video(src / "no_audio.mp4", 45, FPS)
    write_video(src / "one_frame.mp4", 1, FPS, audio_seconds=0.1)
    whole = (src / "no_audio.mp4").read_bytes()
    (src / "broken.mp4").write_bytes(whole[: len(whole) // 2])  # cut short before its index: nothing decodes
    (src / "notes.txt").write_text("not a video")
    return src, {r.id: r for r in recs}


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    src, _ = corpus
    out = tmp_path_factory.mktemp("out")
    result = run_label_archive([str(src)], str(out), **SETTINGS)
    return out, result


def test_the_run_records_its_labelling_policy(run):
    out, result = run
    con = connect(str(out))
    assert con.sql("SELECT DISTINCT stride, vote_seconds, audio_used FROM videos WHERE status = 'labelled'"
                   ).fetchall() == [(16, 0.4, True)]
    assert "labelling policy: stride 16, voting over 0.4 s, audio on" in result["text"]


def frames_of(out, name: str):
    con = connect(str(out))
    return con.sql(f"SELECT * FROM frames WHERE source_uri LIKE '%/{name}' ORDER BY frame_index").fetchnumpy()


def decoded_len(path) -> int:
    return len(decord.VideoReader(str(path)))


def test_run_summary_counts(run):
    _, result = run
    assert result["labelled"] == 6 and result["failed"] == 1 and result["skipped"] == 1
    assert result["problems"] == 1  # broken.mp4: `emoframe label` exits 1
    assert "broken.mp4" in result["text"] and "truncated" in result["text"]


def test_the_run_writes_its_report_with_a_page_per_video_it_labelled(run, corpus):
    out, result = run
    index = out / "_report" / "index.html"
    assert index.exists(), result["text"]
    html = index.read_text()
    pages = sorted((out / "_report" / "pages").rglob("*.html"))  # pages/v-<model_version>/<video>.html
    assert len(pages) == result["labelled"] == 6
    assert all(p.name in html for p in pages)  # linked from the archive page
    assert "broken.mp4" in html and "truncated" in html  # what failed, and why


def test_one_row_per_decoded_frame_for_every_video(run, corpus):
    out, _ = run
    src, _ = corpus
    con = connect(str(out))
    rows = dict(con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall())
    videos = sorted(p for p in src.rglob("*.mp4") if p.name != "broken.mp4")
    assert sorted(rows) == sorted(str(p) for p in videos)
    for p in videos:
        assert rows[str(p)] == decoded_len(p), p.name
        idx = frames_of(out, p.name)["frame_index"]
        np.testing.assert_array_equal(idx, np.arange(decoded_len(p)))
    assert rows[str(src / "one_frame.mp4")] == 1


def test_masks_follow_the_input(run, corpus):
    out, _ = run
    _, recs = corpus
    gap = frames_of(out, "face gap.mp4")
    np.testing.assert_array_equal(~gap["face_present"], np.isin(np.arange(60), BLANK))
    audio = gap["audio_present"]
    t = (np.arange(60) + 0.5) / FPS
    margin = 0.1  # half the 175 ms audio context
    assert not audio[(t > SILENT_S[0] + margin) & (t < SILENT_S[1] - margin)].any()
    assert audio[(t < SILENT_S[0] - margin) | ((t > SILENT_S[1] + margin) & (t < 4.0 - margin))].all()
    assert not frames_of(out, "no_audio.mp4")["audio_present"].any()
    for r in recs.values():
        f = frames_of(out, f"{r.id}.mp4")
        for a, b in r.face_absent:
            assert not f["face_present"][a + 1:b - 1].any()
        if not r.has_audio:
            assert not f["audio_present"].any()
        else:
            assert f["audio_present"].mean() > 0.6


def test_labels_and_probabilities_come_from_the_model(run):
    out, _ = run
    con = connect(str(out))
    labelled = "FROM frames WHERE label IS NOT NULL ORDER BY source_uri, frame_index"
    probs = np.stack([con.sql(f"SELECT {c} {labelled}").fetchnumpy()[c] for c in PROB_COLUMNS], 1)
    df = con.sql(f"SELECT label, label_id, confidence, model_name, model_version, run_id {labelled}").fetchnumpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(df["label_id"], probs.argmax(1))
    np.testing.assert_allclose(df["confidence"], probs.max(1), atol=1e-6)
    assert all(CLASSES[i] == name for i, name in zip(df["label_id"], df["label"]))
    assert len(set(df["label"])) > 1  # a real model, not a constant
    assert set(df["model_name"]) == {"expression_fusion"} and len(set(df["run_id"])) == 1
    versions = sorted(p.name for p in (DEFAULT_MODEL_REPO / "expression_fusion").iterdir() if p.name.isdigit())
    assert set(df["model_version"]) == {versions[-1]}


def test_no_label_where_a_frame_has_neither_face_nor_audio(run):
    """'face gap.mp4': blank frames 20-34, silence from 1.0 to 2.0 s (frames 15-30 at 15 fps): the frames
    in both get NULL label, id, confidence and probabilities; every other frame a label."""
    out, _ = run
    con = connect(str(out))
    rows = con.sql("SELECT frame_index, face_present, audio_present, label IS NULL AS no_label, "
                   "label_id IS NULL AND confidence IS NULL AND prob_happiness IS NULL AS all_null FROM frames "
                   "WHERE source_uri LIKE '%/face gap.mp4' ORDER BY frame_index").fetchnumpy()
    neither = ~rows["face_present"] & ~rows["audio_present"]
    assert neither.sum() >= 8  # the overlap of the two stretches, less the audio context's margins
    np.testing.assert_array_equal(rows["no_label"], neither)
    np.testing.assert_array_equal(rows["all_null"], neither)
    assert con.sql("SELECT count(*) FROM frames WHERE label IS NULL AND (face_present OR audio_present)"
                   ).fetchall() == [(0,)]


def test_face_centred_rows_carry_track_0_and_the_whole_frame_as_box(run):
    out, _ = run
    con = connect(str(out))
    rows = con.sql("SELECT f.face_present, f.track_id, f.box_x, f.box_y, f.box_w, f.box_h, v.width, v.height, "
                   "f.det_score, f.faces_detected, v.face_mode FROM frames f JOIN videos v USING (video_id) "
                   "WHERE f.source_uri LIKE '%/face gap.mp4'").fetchall()
    for present, track, x, y, w, h, vw, vh, score, n, mode in rows:
        assert mode == "centred" and score is None and n == int(present)
        assert (track, x, y, w, h) == ((0, 0, 0, vw, vh) if present else (None, None, None, None, None))


def test_videos_table_is_complete(run, corpus):
    out, result = run
    src, _ = corpus
    con = connect(str(out))
    rows = con.sql("SELECT * FROM videos ORDER BY source_uri").fetchnumpy()
    assert len(rows["source_uri"]) == 8  # every file the run saw, notes.txt included
    for i, uri in enumerate(rows["source_uri"]):
        if uri.endswith("notes.txt"):
            assert (rows["status"][i], rows["error_reason"][i]) == ("skipped", "not_a_video")
            assert rows["error_message"][i] == ".txt extension" and rows["run_id"][i] == result["run_id"]
            continue
        assert rows["content_hash"][i].startswith(f"{rows['size_bytes'][i]}:")
        if uri.endswith("broken.mp4"):
            assert rows["status"][i] == "failed" and rows["error_reason"][i] == "truncated"
            assert "cut short" in rows["error_message"][i]
        else:
            assert rows["status"][i] == "labelled" and rows["frame_count"][i] == decoded_len(uri)
            assert rows["fps"][i] > 0 and rows["duration_s"][i] > 0 and rows["processing_s"][i] > 0
            assert rows["contract"][i] == fingerprint()
        assert rows["run_id"][i] == result["run_id"] and rows["size_bytes"][i] > 0
    assert rows["has_audio"][list(rows["source_uri"]).index(str(src / "no_audio.mp4"))] == False  # noqa: E712


def test_parquet_files_carry_the_schema_and_version(run):
    out, _ = run
    for table, schema in (("frames", FRAMES_SCHEMA), ("videos", VIDEOS_SCHEMA)):
        files = list((out / table).rglob("*.parquet"))
        assert files and all(f.parent.name.startswith("model_version=") for f in files)
        s = pq.read_schema(files[0])
        assert s.remove_metadata().equals(schema.remove_metadata())
        assert s.metadata[b"emoframe.schema_version"] == str(SCHEMA_VERSION).encode()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary files left


def test_rerun_of_a_finished_run_changes_nothing(run, corpus):
    out, first = run
    src, _ = corpus
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    report = {p: p.stat().st_mtime_ns for p in (out / "_report").rglob("*.html")}
    again = run_label_archive([str(src)], str(out), **SETTINGS)
    assert again["services_started"] is False  # worked out from the output alone: no Prefect, Ray, Triton
    assert again["already_done"] == 6 and again["labelled"] == again["failed"] == 0
    # broken.mp4 failed in the first run and is unchanged: shown again, and the run still counts it (exit 1)
    assert again["earlier_failed"] == 1 and again["problems"] == 1
    assert "FAILED broken.mp4 (in run " in again["text"] and "not_a_video" in again["text"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files
    assert {p: p.stat().st_mtime_ns for p in (out / "_report").rglob("*.html")} == report  # nothing new to show


def test_a_rerun_under_another_policy_or_face_mode_relabels(run, corpus, tmp_path):
    """What changes the labels (the labelling policy, the face mode) is part of "already done"; the file that
    failed for a reason of its own (broken.mp4) stays done."""
    out, _ = run
    src, _ = corpus
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    other = run_label_archive([str(src)], str(copy), **{**SETTINGS, "audio": False})
    assert other["labelled"] == 6 and other["earlier_failed"] == 1
    con = connect(str(copy))
    assert con.sql("SELECT DISTINCT audio_used FROM videos WHERE status = 'labelled'").fetchall() == [(False,)]
    detect = run_label_archive([str(src / "no_audio.mp4")], str(copy), **{**SETTINGS, "audio": False,
                                                                            "face_mode": "detect"})
    assert detect["labelled"] == 1 and detect["already_done"] == 0


def test_a_moved_file_keeps_its_labels_and_leaves_one_set_of_rows(tmp_path):
    """Renamed into another folder: recognised by its content, labels copied rather than computed again, and
    the old name's rows removed (they were 308 rows for a 154-frame video before)."""
    clip = write_video(tmp_path / "in" / "clip.mp4", 30, FPS)
    out = tmp_path / "out"
    assert run_label_archive([str(tmp_path / "in")], str(out), **SETTINGS)["labelled"] == 1
    moved = tmp_path / "in" / "2026" / "renamed clip.mp4"
    moved.parent.mkdir()
    clip.rename(moved)
    res = run_label_archive([str(tmp_path / "in")], str(out), **SETTINGS)
    assert (res["labelled"], res["reused"], res["problems"]) == (0, 1, 0), res["text"]
    assert f"REUSED renamed clip.mp4: moved from {clip}" in res["text"]
    con = connect(str(out))
    assert con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall() == [(str(moved), 30)]
    assert con.sql("SELECT source_uri, status FROM videos").fetchall() == [(str(moved), "labelled")]
    again = run_label_archive([str(tmp_path / "in")], str(out), **SETTINGS)
    assert (again["already_done"], again["labelled"], again["reused"]) == (1, 0, 0)


def test_no_more_than_max_in_flight_videos_are_submitted_at_once(tmp_path):
    """With one video in flight, each video's task starts after the previous one finished: the videos rows'
    processing intervals do not overlap (with the default, two run at once on this 2-core machine)."""
    for i in range(3):
        write_video(tmp_path / "in" / f"clip{i}.mp4", 20, FPS)
    out = tmp_path / "out"
    res = run_label_archive([str(tmp_path / "in")], str(out), max_in_flight=1, report=False, **SETTINGS)
    assert res["labelled"] == 3 and res["services_started"] is True
    spans = connect(str(out)).sql("SELECT started_at, finished_at FROM videos ORDER BY started_at").fetchall()
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_a_changed_file_is_relabelled_in_place(tmp_path):
    clip = write_video(tmp_path / "in" / "clip.mp4", 30, FPS)
    out = tmp_path / "out"
    assert run_label_archive([str(clip)], str(out))["labelled"] == 1
    write_video(clip, 50, FPS)  # same name, new content (size and mtime change)
    res = run_label_archive([str(clip)], str(out))
    assert res["labelled"] == 1 and res["already_done"] == 0
    con = connect(str(out))
    assert con.sql("SELECT count(*) FROM frames").fetchall()[0][0] == 50  # replaced, not appended
    assert con.sql("SELECT frame_count FROM videos").fetchall() == [(50,)]


def test_rerun_with_force_replaces_instead_of_duplicating(run, corpus):
    out, first = run
    src, _ = corpus
    before = sorted(p.name for p in (out / "frames").rglob("*.parquet"))
    n_before = connect(str(out)).sql("SELECT count(*) FROM frames").fetchall()[0][0]
    second = run_label_archive([str(src / "face gap.mp4")], str(out), force=True, **SETTINGS)
    assert sorted(p.name for p in (out / "frames").rglob("*.parquet")) == before
    con = connect(str(out))
    assert con.sql("SELECT count(*) FROM frames").fetchall()[0][0] == n_before
    runs = dict(con.sql("SELECT source_uri, run_id FROM videos").fetchall())
    assert runs[str(src / "face gap.mp4")] == second["run_id"] != first["run_id"]


def test_query_command_runs_sql_over_the_output(run):
    out, _ = run
    res = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "query",
                          "SELECT count(DISTINCT video_id) AS n FROM frames", "--out", str(out)],
                         capture_output=True, text=True, check=True)
    # header, rule, the one value row, then the row and column count
    assert [line.strip() for line in res.stdout.splitlines()] == ["n", "-", "6", "(1 rows, 1 columns)"], res.stdout
    direct = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/frames/**/*.parquet', hive_partitioning=true)")
    assert direct.fetchall()[0][0] > 0


def test_unreachable_triton_url_is_a_clear_error(corpus, tmp_path):
    from emoframe.flows.run.preflight import PreflightError

    src, _ = corpus
    with pytest.raises(PreflightError, match="--triton-url: .*127.0.0.1:9"):  # before any service starts
        run_label_archive([str(src / "no_audio.mp4")], str(tmp_path), triton_url="127.0.0.1:9")


def test_every_sql_query_in_the_readme_runs_on_real_output(run):
    """The README's analyst queries are executable documentation: each must run and return rows."""
    import re

    out, _ = run
    readme = (DEFAULT_MODEL_REPO.parent / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    queries = [q.strip() for b in blocks for q in b.split(";") if "SELECT" in q]
    assert len(queries) == 6
    con = connect(str(out))
    summary = con.sql(queries.pop(0)).fetchall()  # the summary view: one row per labelled video
    assert len(summary) == 6 and all(0 <= happy <= 1 for _, _, happy, _ in summary), summary
    for q in queries[:2]:
        assert con.sql(q).fetchall(), q
    for row in con.sql(queries[2]).fetchall():  # stretches of one expression per face
        start, end, n = row[-3:]
        assert end >= start and n >= 1
    main = con.sql(queries[3]).fetchall()  # one row per frame: its largest face
    total = con.sql("SELECT count(DISTINCT (video_id, frame_index)) FROM frames").fetchall()[0][0]
    assert len(main) == total
    failed = con.sql(queries[4]).fetchall()  # what failed or was skipped, and why
    assert sorted(r[:3] for r in failed) == [("failed", "truncated", 1), ("skipped", "not_a_video", 1)]
    share = con.sql(queries[0]).fetchall()
    per_video = {}
    for uri, _, pct in share:
        per_video[uri] = per_video.get(uri, 0) + pct
    assert all(abs(v - 100) < 1 for v in per_video.values())



def test_compacted_output_relabels_one_copy_and_reads_with_plain_readers(run, corpus, tmp_path):
    """The run's output compacted, then a forced relabel of one video through the real pipeline: the video's
    rows leave the compacted files and land once; every other row, and what the ledger says, is unchanged."""
    import pyarrow.dataset as ds

    from emoframe.flows.archive.compact import compact

    out, _ = run
    src, _ = corpus
    assert (out / "_state" / "tritonserver.log").is_file()  # the state area, not the output root
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    con = connect(str(copy))
    before = sorted(con.sql("SELECT * EXCLUDE (model_version) FROM frames").fetchall(), key=repr)
    result = compact(str(copy))
    assert result.refused is None and result.partitions[0].own_files == 14  # 8 videos rows, 6 frames files
    tables = [p for d in ("frames", "videos") for p in (copy / d).rglob("*.parquet")]  # not _report/summary
    assert sorted(p.name.startswith("compacted.") for p in tables) == [True, True]
    con = connect(str(copy))
    assert sorted(con.sql("SELECT * EXCLUDE (model_version) FROM frames").fetchall(), key=repr) == before
    # Plain readers of the folder: the state area and the report are not in their way.
    assert ds.dataset(str(copy / "frames"), partitioning="hive").count_rows() == len(before)
    assert pq.read_table(str(copy / "videos")).num_rows == 8  # what pandas.read_parquet does
    target = str(src / "face gap.mp4")
    n_target = sum(1 for r in before if r[1] == target)
    second = run_label_archive([target], str(copy), force=True, **SETTINGS)
    assert second["labelled"] == 1
    con = connect(str(copy))
    assert con.sql(f"SELECT count(*), count(DISTINCT run_id) FROM frames WHERE source_uri = '{target}'"
                   ).fetchall() == [(n_target, 1)]
    assert con.sql("SELECT count(*) FROM frames").fetchall()[0][0] == len(before)
    assert con.sql(f"SELECT run_id FROM videos WHERE source_uri = '{target}'").fetchall() == [(second["run_id"],)]
    again = run_label_archive([str(src)], str(copy), **SETTINGS)
    assert again["already_done"] == 6 and again["labelled"] == 0


def test_the_readmes_first_command_labels_its_sample_videos_and_writes_a_report(tmp_path):
    """`make run` is `emoframe label --demo`: sample videos generated once into the cache (here a fresh one),
    labelled by the real CLI (Prefect, Ray, the embedded Triton), exit 0, a report written. Two samples
    instead of six, to keep it short. (Samples under --out were never labelled: a run does not list its
    own output.)"""
    out = tmp_path / "demo"
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "label", "--demo", "--out", str(out),
                          "--sample-videos", "2"], capture_output=True, text=True, timeout=600, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 labelled, 0 failed" in res.stdout, res.stdout
    assert len(list((tmp_path / "cache" / "emoframe" / "samples" / "seed7-2" / "videos").glob("*.mp4"))) == 2
    assert (out / "_report" / "index.html").is_file()
    labelled = duckdb.sql(f"SELECT count(DISTINCT source_uri) FROM read_parquet('{out}/frames/*/*.parquet')")
    assert labelled.fetchall() == [(2,)]
