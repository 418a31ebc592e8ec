"""Videos in a bucket, output to a bucket: a real S3 server (SeaweedFS on loopback), the real flow (embedded
Triton, local Ray, Prefect), the output read back with DuckDB through emoframe.flows.analysis.query."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pyarrow.fs as pafs
import pytest

import decord
from emoframe.flows.run.label_archive import run_label_archive
from emoframe.flows.analysis.query import connect
from emoframe.flows.archive.sources import list_sources
from emoframe.workers.output.storage import filesystem_for
from tests.media import write_video
from tests.seaweed import S3Server
from emoframe.workers.spec.schema import FRAMES_SCHEMA, videos_path
from emoframe.workers.output.sink import video_row, videos_table, write_atomic

pytestmark = pytest.mark.integration

FPS = 15
# key -> frame count of a real clip
CLIPS = {"in/clip one.mp4": 45, "in/sub/é two.mp4": 30}  # a space and unicode: keys are taken literally
# key -> bytes: what a listing of in/ must skip, keep (empty.mp4: the pipeline fails it) or not reach
OTHER = {"in/notes.txt": b"not a video", "in/random.mp4": np.random.default_rng(3).bytes(5000), "in/empty.mp4": b"",
         "in/.hidden.mp4": b"", "elsewhere/x.mp4": b""}


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, tmp_path_factory):
    """The clips uploaded under s3://<bucket>/in/, plus the objects that are not (all) videos; returns the
    local copies of the clips."""
    local = tmp_path_factory.mktemp("s3-clips")
    fs = s3_server.filesystem()
    copies = {}
    for key, n in CLIPS.items():
        path = write_video(local / key, n, FPS, audio_seconds=n / FPS if "one" in key else None)
        copies[key] = path
        with fs.open_output_stream(f"{s3_server.bucket}/{key}") as f:
            f.write(path.read_bytes())
    for key, data in OTHER.items():
        with fs.open_output_stream(f"{s3_server.bucket}/{key}") as f:
            f.write(data)
    return copies


def test_filesystem_for_reaches_the_endpoint_in_the_environment(s3_server, bucket):
    fs, path = filesystem_for(s3_server.uri("in/sub/é two.mp4"))
    assert path == f"{s3_server.bucket}/in/sub/é two.mp4"
    assert fs.get_file_info(path).type == pafs.FileType.File


def test_listing_a_prefix(s3_server, bucket):
    listing = list_sources([s3_server.uri("in/")])
    u = s3_server.uri
    assert [s.uri for s in listing.sources] == [u("in/clip one.mp4"), u("in/empty.mp4"), u("in/sub/é two.mp4")]
    assert listing.skipped_not_video == [u("in/notes.txt"), u("in/random.mp4")]
    assert "signature" in listing.skip_reasons[u("in/random.mp4")]
    assert listing.missing == []
    by_uri = {s.uri: s for s in listing.sources}
    for key, path in bucket.items():
        src = by_uri[u(key)]
        assert src.size_bytes == path.stat().st_size
        assert re.fullmatch(r"[0-9a-f]{32}(-\d+)?", src.mtime)  # the object's ETag
    assert by_uri[u("in/empty.mp4")].size_bytes == 0


def test_listing_globs_includes_excludes_and_missing(s3_server, bucket):
    u = s3_server.uri
    assert [s.uri for s in list_sources([u("in/*.mp4")]).sources] == [u("in/clip one.mp4"), u("in/empty.mp4")]
    assert [s.uri for s in list_sources([u("**/é*.mp4")]).sources] == [u("in/sub/é two.mp4")]
    only_sub = list_sources([u("in")], include=("sub/*",))
    assert [s.uri for s in only_sub.sources] == [u("in/sub/é two.mp4")] and only_sub.skipped_not_video == []
    assert [s.uri for s in list_sources([u("in")], exclude=("sub/*", "empty.*")).sources] == [u("in/clip one.mp4")]
    assert list_sources([u("nope/"), u("in/*.avi")]).missing == [u("nope/"), u("in/*.avi")]


@pytest.fixture(scope="module")
def labelled(s3_server: S3Server, bucket):
    """The flow from the bucket to the bucket."""
    out = s3_server.uri("out")
    return out, run_label_archive([s3_server.uri("in")], out)


def test_flow_labels_from_the_bucket_into_the_bucket(labelled):
    _, result = labelled
    assert (result["labelled"], result["failed"], result["skipped"]) == (2, 1, 3), result["text"]
    assert result["problems"] == 2  # empty.mp4 failed, random.mp4 is no video; .hidden.mp4 and notes.txt are not


def test_query_reads_the_bucket_one_row_per_decoded_frame(labelled, s3_server, bucket):
    out, _ = labelled
    con = connect(out)
    counts = dict(con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall())
    assert counts == {s3_server.uri(k): len(decord.VideoReader(str(p))) for k, p in bucket.items()}
    assert con.sql("SELECT DISTINCT typeof(model_version) FROM frames").fetchall() == [("VARCHAR",)]
    videos = dict(con.sql("SELECT source_uri, coalesce(error_reason, status) FROM videos").fetchall())
    assert videos == {s3_server.uri("in/clip one.mp4"): "labelled", s3_server.uri("in/sub/é two.mp4"): "labelled",
                      s3_server.uri("in/empty.mp4"): "empty_file", s3_server.uri("in/.hidden.mp4"): "hidden",
                      s3_server.uri("in/notes.txt"): "not_a_video", s3_server.uri("in/random.mp4"): "not_a_video"}
    assert con.execute("SELECT count(*) FROM frames f JOIN videos v USING (video_id, model_version)").fetchone()[0] == \
        sum(counts.values())


def test_no_credential_in_the_output_or_the_summary(labelled, s3_server):
    out, result = labelled
    con = connect(out)
    texts = [result["text"], repr(result)]
    for table in ("frames", "videos"):
        rel = con.sql(f"SELECT DISTINCT * FROM {table}")
        texts += [repr(row) for row in rel.fetchall()]
    fs = s3_server.filesystem()
    texts += [fi.path for fi in fs.get_file_info(pafs.FileSelector(s3_server.bucket, recursive=True))]
    blob = "\n".join(texts)
    for secret in s3_server.credentials:
        assert secret not in blob


def _output_of(where: str, request, tmp_path) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, base path, URI) of a fresh output location, local or in the bucket."""
    if where == "local":
        return pafs.LocalFileSystem(), str(tmp_path), str(tmp_path)
    server = request.getfixturevalue("s3_server")
    return server.filesystem(), f"{server.bucket}/{tmp_path.name}", server.uri(tmp_path.name)


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_query_output_with_videos_but_no_frames_yet(where, request, tmp_path):
    """Every video failed: the videos table is worth querying, frames is an empty view with its columns."""
    fs, base, out = _output_of(where, request, tmp_path)
    row = video_row("s3://b/in/a.mp4", status="failed", model_name="m", run_id="r", error_reason="empty_file",
                    error_message="empty", started_at=datetime.now(timezone.utc))
    write_atomic(videos_table([row]), fs, videos_path(base, "1.10", "s3://b/in/a.mp4"))
    with fs.open_output_stream(f"{base}/videos/model_version=1.10/.a.parquet.tmp-1234") as f:
        f.write(b"half a file of a write in progress")  # must be invisible to readers
    con = connect(out)
    assert con.execute("SELECT model_version, typeof(model_version), error_reason FROM videos").fetchall() == \
        [("1.10", "VARCHAR", "empty_file")]
    assert con.execute("SELECT count(*) FROM frames").fetchone() == (0,)
    assert [c[0] for c in con.execute("SELECT * FROM frames").description] == FRAMES_SCHEMA.names + ["model_version"]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_query_without_any_output_says_so(where, request, tmp_path):
    _, _, out = _output_of(where, request, tmp_path)
    with pytest.raises(FileNotFoundError, match="no emoframe output in .*emoframe label"):
        connect(out)


def test_preflight_against_the_bucket(s3_server, bucket):
    """The output prefix is probed with a real write (and nothing is left), a missing bucket or source is
    named before anything starts."""
    from emoframe.flows.run.preflight import PreflightError, check_output, check_sources

    fs = s3_server.filesystem()
    before = {fi.path for fi in fs.get_file_info(pafs.FileSelector(s3_server.bucket, recursive=True))}
    check_output(s3_server.uri("labels/run1"))
    check_sources([s3_server.uri("in"), s3_server.uri("in/clip one.mp4"), s3_server.uri("in/*.mp4")])
    after = {fi.path for fi in fs.get_file_info(pafs.FileSelector(s3_server.bucket, recursive=True))}
    assert {p for p in after - before if not p.endswith("labels") and not p.endswith("run1")} == set()
    with pytest.raises(PreflightError, match="bucket no-such-bucket does not exist"):
        check_output("s3://no-such-bucket/labels")
    with pytest.raises(PreflightError, match=r"not found: s3://.*/in/typo\.mp4"):
        check_sources([s3_server.uri("in/clip one.mp4"), s3_server.uri("in/typo.mp4")])
