"""Source listing: local files, folders and globs, URI handling for s3:// and gs://, and probing of what
claims to be a video. The object-store listing runs here over pyarrow's in-memory filesystem standing in for
a bucket; tests/test_s3.py runs it against a real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

import emoframe.flows.archive.sources as sources
from emoframe.flows.archive.sources import list_sources, sniff_container
from emoframe.workers.output.storage import filesystem_for
from tests.media import write_video

MP4_HEAD = b"\x00\x00\x00\x20ftypisom" + bytes(20)


def uris(listing) -> list[str]:
    return [s.uri for s in listing.sources]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small archive: real videos in nested folders, odd names, hidden entries, non-videos, fakes."""
    root = tmp_path / "archive"
    write_video(root / "a.mp4", 3)
    write_video(root / "sub" / "deeper" / "b.mkv", 3)
    write_video(root / "sub" / "with space é.mp4", 3)
    write_video(root / ".hidden.mp4", 3)
    write_video(root / ".cache" / "c.mp4", 3)
    (root / "notes.txt").write_text("not a video")
    (root / "sub" / "fake.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "sub" / "page.mov").write_text("<html>an error page saved as a video</html>")
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_folder_is_listed_recursively_and_sorted(tree):
    listing = list_sources([str(tree)])
    assert uris(listing) == [str(tree / "a.mp4"), str(tree / "empty.mp4"), str(tree / "sub/deeper/b.mkv"),
                             str(tree / "sub/with space é.mp4")]
    assert listing.missing == []


def test_hidden_files_and_folders_are_left_out_unless_named(tree):
    assert not any("/." in u for u in uris(list_sources([str(tree)])))
    assert uris(list_sources([str(tree / ".hidden.mp4")])) == [str(tree / ".hidden.mp4")]


def test_non_videos_are_skipped_by_extension_with_a_reason(tree):
    listing = list_sources([str(tree)])
    notes = str(tree / "notes.txt")
    assert notes in listing.skipped_not_video
    assert listing.skipped[notes] == listing.skip_reasons[notes] == "not_a_video: .txt extension"


def test_video_extension_without_a_container_signature_is_skipped_by_probing(tree):
    listing = list_sources([str(tree)])
    for name in ("sub/fake.mp4", "sub/page.mov"):
        assert str(tree / name) in listing.skipped_not_video
        assert listing.skipped[str(tree / name)].startswith("not_a_video: no known container signature (")
    assert len(listing.skipped_not_video) == 3  # notes.txt + the two fakes


def test_zero_byte_video_is_still_listed_so_the_pipeline_fails_it(tree):
    listing = list_sources([str(tree / "empty.mp4")])
    assert [(s.uri, s.size_bytes) for s in listing.sources] == [(str(tree / "empty.mp4"), 0)]


def test_size_and_mtime_are_recorded(tree):
    (src,) = list_sources([str(tree / "a.mp4")]).sources
    st = (tree / "a.mp4").stat()
    assert src.size_bytes == st.st_size
    assert abs(datetime.fromisoformat(src.mtime).timestamp() - st.st_mtime) < 1e-3


def test_globs_plain_and_recursive(tree):
    assert uris(list_sources([str(tree / "*.mp4")])) == [str(tree / "a.mp4"), str(tree / "empty.mp4")]
    assert uris(list_sources([str(tree / "**" / "*.mkv")])) == [str(tree / "sub/deeper/b.mkv")]


def test_an_existing_name_with_glob_characters_is_taken_literally(tmp_path):
    odd = write_video(tmp_path / "clip[1].mp4", 3)
    write_video(tmp_path / "clip1.mp4", 3)
    assert uris(list_sources([str(odd)])) == [str(odd)]


def test_include_and_exclude_match_the_relative_path_or_the_name(tree):
    assert uris(list_sources([str(tree)], include=("sub/*",))) == [str(tree / "sub/deeper/b.mkv"),
                                                                   str(tree / "sub/with space é.mp4")]
    assert uris(list_sources([str(tree)], include=("*.mkv",))) == [str(tree / "sub/deeper/b.mkv")]
    assert uris(list_sources([str(tree)], exclude=("sub/*", "empty*"))) == [str(tree / "a.mp4")]
    assert uris(list_sources([str(tree)], include=("*.MP4",))) == []  # case-sensitive, like object keys


def test_dot_dot_segments_are_resolved_and_duplicates_dropped(tree):
    listing = list_sources([str(tree / "sub" / ".." / "a.mp4"), str(tree / "a.mp4"), f"file://{tree}/a.mp4"])
    assert uris(listing) == [str(tree / "a.mp4")]


def test_missing_paths_and_empty_globs_are_reported(tree):
    listing = list_sources([str(tree / "nope"), str(tree / "*.nothing"), str(tree / "a.mp4")])
    assert listing.missing == [str(tree / "nope"), str(tree / "*.nothing")]
    assert uris(listing) == [str(tree / "a.mp4")]


def test_real_files_of_every_listed_container_pass_the_probe(tmp_path):
    codecs = {".mp4": "libx264", ".m4v": "mpeg4", ".mov": "mpeg4", ".mkv": "mpeg4", ".avi": "mjpeg",
              ".ts": "mpeg2video", ".mpg": "mpeg2video", ".mpeg": "mpeg2video", ".flv": "flv", ".wmv": "wmv2"}
    for ext, codec in codecs.items():
        write_video(tmp_path / f"v{ext}", 3, codec=codec, pix_fmt="yuvj420p" if codec == "mjpeg" else "yuv420p")
    # WebM is Matroska (same EBML header, doctype "webm"). PyAV's libvpx refuses to open once decord's FFmpeg
    # is loaded in the process (as in the full suite), so the WebM file is a Matroska file under that name.
    (tmp_path / "v.webm").write_bytes((tmp_path / "v.mkv").read_bytes())
    assert set(codecs) | {".webm"} == sources.VIDEO_EXTENSIONS
    listing = list_sources([str(tmp_path)])
    assert len(listing.sources) == len(codecs) + 1, listing.skip_reasons


@pytest.mark.parametrize("head, container", [
    (MP4_HEAD, "mp4/mov"),
    (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "mp4/mov"),  # QuickTime without ftyp
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "matroska/webm"),
    (b"RIFF\x88\x3a\x00\x00AVI LIST", "avi"),
    (b"RIFF\x88\x3a\x00\x00WAVEfmt ", None),  # RIFF, but audio
    (b"\x00\x00\x01\xba\x21\x00\x01\x00", "mpeg-ps"),
    (b"\x47\x40\x11\x10" + bytes(184) + b"\x47" + bytes(11), "mpeg-ts"),
    (b"\x47\x40\x11\x10" + bytes(196), None),  # one sync byte alone: 1 random file in 256 has it
    (bytes(4) + b"\x47" + bytes(191) + b"\x47" + bytes(3), "mpeg-ts"),  # M2TS: 4-byte timestamps
    (b"FLV\x01\x05\x00\x00\x00\x09", "flv"),
    (bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"), "asf"),
    (b"\x89PNG\r\n\x1a\n", None),
    (b"hello, world", None),
    (b"", None),
])
def test_sniff_container(head, container):
    assert sniff_container(head) == container


# --- URIs -------------------------------------------------------------------------------------------------

@pytest.fixture
def s3_env(monkeypatch):
    """An endpoint in the environment (nothing listens there: constructing a filesystem connects nowhere)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def test_filesystem_for_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("x/../y.mp4", "file://x/../y.mp4", str(tmp_path / "y.mp4")):
        fs, path = filesystem_for(uri)
        assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "y.mp4")


def test_filesystem_for_s3_keeps_keys_literal(s3_env):
    for key in ("a b é.mp4", "100%20.mp4", "what?.mp4", "x/../y.mp4"):
        fs, path = filesystem_for(f"s3://bucket/in/{key}")
        assert isinstance(fs, pafs.S3FileSystem) and path == f"bucket/in/{key}"
    assert filesystem_for("s3://bucket/prefix/")[1] == "bucket/prefix"
    assert filesystem_for("S3://bucket")[1] == "bucket"


def test_filesystem_for_gs_takes_the_same_path():
    for scheme in ("gs", "gcs"):
        fs, path = filesystem_for(f"{scheme}://bucket/in/a b é.mp4")
        assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/in/a b é.mp4"


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLEKEY:s3cr3t-value@bucket/in", "gs://user:s3cr3t-value@bucket/in",
                                 "https://user:s3cr3t-value@host/in", "ftp://s3cr3t-value"])
def test_uris_with_credentials_or_unknown_schemes_are_refused_without_echoing_them(uri, s3_env):
    with pytest.raises(ValueError) as err:
        filesystem_for(uri)
    assert "s3cr3t-value" not in str(err.value) and "AKIAEXAMPLEKEY" not in str(err.value)


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "s3://buck*/key"])
def test_bad_bucket_names_are_refused(uri, s3_env):
    with pytest.raises(ValueError):
        filesystem_for(uri)


# --- the object-store code path, over pyarrow's in-memory filesystem ----------------------------------------

@pytest.fixture
def bucket(monkeypatch, tmp_path) -> pafs.FileSystem:
    """gs://bkt/... served by an in-memory filesystem: everything but the network is the real code path."""
    mock = pafs._MockFileSystem()
    real = sources.filesystem_for
    monkeypatch.setattr(sources, "filesystem_for", lambda uri: (mock, real(uri)[1]))
    video = write_video(tmp_path / "v.mp4", 3).read_bytes()
    objects = {"videos/a b é.mp4": video, "videos/sub/c.mkv": video, "videos/sub/.hidden.mp4": video,
               "videos/.trash/d.mp4": video, "videos/fake.mp4": b"<html>403</html>", "videos/notes.txt": b"hi",
               "videos/empty.mp4": b"", "other/e.mp4": video}
    for key, data in objects.items():
        mock.create_dir(f"bkt/{key}".rsplit("/", 1)[0])
        with mock.open_output_stream(f"bkt/{key}") as f:
            f.write(data)
    return mock


def test_bucket_prefix_listing(bucket):
    listing = list_sources(["gs://bkt/videos"])
    assert uris(listing) == ["gs://bkt/videos/a b é.mp4", "gs://bkt/videos/empty.mp4", "gs://bkt/videos/sub/c.mkv"]
    assert listing.skipped_not_video == ["gs://bkt/videos/notes.txt", "gs://bkt/videos/fake.mp4"]
    assert "signature" in listing.skip_reasons["gs://bkt/videos/fake.mp4"]
    assert all(s.size_bytes is not None and s.mtime for s in listing.sources)


def test_bucket_globs_includes_and_single_objects(bucket):
    assert uris(list_sources(["gs://bkt/videos/*.mp4"])) == ["gs://bkt/videos/a b é.mp4", "gs://bkt/videos/empty.mp4"]
    assert uris(list_sources(["gs://bkt/**/*.mkv"])) == ["gs://bkt/videos/sub/c.mkv"]
    assert uris(list_sources(["gs://bkt"], include=("*/sub/*", "e.*"))) == ["gs://bkt/other/e.mp4",
                                                                          "gs://bkt/videos/sub/c.mkv"]
    assert uris(list_sources(["gs://bkt/videos/a b é.mp4"])) == ["gs://bkt/videos/a b é.mp4"]


def test_bucket_missing_keys_prefixes_and_globs(bucket):
    missing = ["gs://bkt/nope.mp4", "gs://bkt/nope/", "gs://bkt/videos/*.avi"]
    assert list_sources(missing).missing == missing


def test_objects_that_cannot_be_probed_are_kept_for_the_pipeline_to_report(bucket, monkeypatch):
    real_walk = sources._walk

    def walk_then_delete(fs, root):  # the object goes away between the listing and the probe
        infos = real_walk(fs, root)
        bucket.delete_file("bkt/videos/fake.mp4")
        return infos

    monkeypatch.setattr(sources, "_walk", walk_then_delete)
    assert "gs://bkt/videos/fake.mp4" in uris(list_sources(["gs://bkt/videos"]))


def test_bucket_hidden_objects_are_counted_a_hidden_folder_once(bucket):
    skipped = list_sources(["gs://bkt/videos"]).skipped
    assert {u: why for u, why in skipped.items() if why.startswith("hidden")} == {
        "gs://bkt/videos/.trash": 'hidden: folder name starts with "." (not looked into)',
        "gs://bkt/videos/sub/.hidden.mp4": 'hidden: name starts with "."'}


def test_bucket_output_prefix_is_never_listed(bucket):
    everything = uris(list_sources(["gs://bkt"]))
    assert "gs://bkt/other/e.mp4" in everything
    for ours in ("gs://bkt/other", "gs://bkt/other/", "gcs://bkt/other"):
        listing = list_sources(["gs://bkt"], exclude_roots=(ours,))
        assert uris(listing) == [u for u in everything if u != "gs://bkt/other/e.mp4"]
        assert "gs://bkt/other/e.mp4" not in listing.skipped and listing.excluded == 0
    # a prefix is a folder, not a string: gs://bkt/oth leaves other/ alone
    assert uris(list_sources(["gs://bkt"], exclude_roots=("gs://bkt/oth",))) == everything


def test_listing_is_the_same_whatever_the_current_folder(tree, monkeypatch):
    monkeypatch.chdir(tree / "sub")
    assert uris(list_sources([os.path.join("..", "a.mp4")])) == [str(tree / "a.mp4")]


# --- links, loops, and every entry accounted for (issue 9) ---------------------------------------------------

def test_a_link_to_its_own_folder_lists_the_video_once_with_a_warning(tmp_path):
    data = tmp_path / "data"
    write_video(data / "v.mp4", 3)
    (data / "self").symlink_to(".")
    listing = list_sources([str(data)])
    assert uris(listing) == [str(data / "v.mp4")]
    assert listing.skipped == {} and listing.excluded == 0
    assert listing.warnings == [f"{data}/self -> {data}: a link back to a folder already listed; not followed again"]


LIST_IN_A_CHILD = """
import json, sys
from emoframe.flows.archive.sources import list_sources
out = {}
for spec in sys.argv[1:]:
    listing = list_sources([spec])
    out[spec] = {"sources": [s.uri for s in listing.sources], "skipped": listing.skipped,
                 "warnings": listing.warnings}
print(json.dumps(out))
"""


def test_two_loop_links_end_and_list_the_video_once(tmp_path):
    """a -> .. and b -> . made pyarrow's recursive listing run without end (memory growing ~30 MB/s): a child
    process with a time limit, so a regression fails the test instead of hanging the suite."""
    data = tmp_path / "data"
    write_video(data / "v.mp4", 3)
    (data / "a").symlink_to("..")
    (data / "b").symlink_to(".")
    specs = [str(data), str(data / "**" / "*.mp4")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    child = subprocess.run([sys.executable, "-c", LIST_IN_A_CHILD, *specs], capture_output=True, text=True,
                           timeout=120, env=env, check=True)
    result = json.loads(child.stdout.splitlines()[-1])
    for spec in specs:
        assert result[spec]["sources"] == [str(data / "v.mp4")], result[spec]
        assert result[spec]["skipped"] == {}
    assert result[str(data)]["warnings"] == [
        f"{data}/a/data: the same folder as {data}, already listed; not listed again",
        f"{data}/b -> {data}: a link back to a folder already listed; not followed again"]


def test_two_names_of_one_file_are_one_source_under_the_first_name(tmp_path):
    data = tmp_path / "data"
    write_video(data / "v.mp4", 3)
    (data / "w.mp4").symlink_to("v.mp4")  # after v.mp4 in order
    (data / "sub").mkdir()
    (data / "sub" / "hard.mp4").hardlink_to(data / "v.mp4")  # before: sub/... < v.mp4
    listing = list_sources([str(data)])
    assert uris(listing) == [str(data / "sub" / "hard.mp4")]
    assert listing.skipped == {str(data / "v.mp4"): f"duplicate: same file as {data}/sub/hard.mp4",
                               str(data / "w.mp4"): f"duplicate: same file as {data}/sub/hard.mp4"}
    # across specs too; the same name again is dropped silently
    listing = list_sources([str(data / "w.mp4"), str(data / "w.mp4"), str(data / "v.mp4")])
    assert uris(listing) == [str(data / "w.mp4")] and list(listing.skipped) == [str(data / "v.mp4")]


def test_a_link_to_a_folder_outside_is_followed_once(tmp_path):
    write_video(tmp_path / "outside" / "o.mp4", 3)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ext").symlink_to(tmp_path / "outside")
    (data / "ext2").symlink_to("../outside")
    listing = list_sources([str(data)])
    assert uris(listing) == [str(data / "ext" / "o.mp4")]  # the name seen, not the target
    assert listing.warnings == [f"{data}/ext2 -> {data}/ext: a link to a folder already listed; not followed again"]


def test_every_entry_ends_listed_or_skipped_with_a_reason(tree):
    os.mkfifo(tree / "pipe.mp4")
    (tree / "gone.mp4").symlink_to("nowhere.mp4")
    (tree / "sub" / "loop.mp4").symlink_to("loop.mp4")
    listing = list_sources([str(tree)])
    assert listing.skipped == {
        str(tree / ".cache"): 'hidden: folder name starts with "." (not looked into)',
        str(tree / ".hidden.mp4"): 'hidden: name starts with "."',
        str(tree / "gone.mp4"): "dangling_link: -> nowhere.mp4",
        str(tree / "notes.txt"): "not_a_video: .txt extension",
        str(tree / "pipe.mp4"): "special_file: fifo",
        str(tree / "sub" / "loop.mp4"): "dangling_link: -> loop.mp4 (a loop of links)",
        str(tree / "sub" / "fake.mp4"): listing.skipped[str(tree / "sub" / "fake.mp4")],
        str(tree / "sub" / "page.mov"): listing.skipped[str(tree / "sub" / "page.mov")]}
    assert len(listing.sources) == 4 and listing.skipped_not_video == [
        str(tree / "notes.txt"), str(tree / "sub" / "fake.mp4"), str(tree / "sub" / "page.mov")]
    assert listing.skip_counts() == {"not_a_video": 3, "dangling_link": 2, "hidden": 2, "special_file": 1}
    # named, a hidden file is listed; a glob's dangling link is accounted for too
    assert uris(list_sources([str(tree / ".hidden.mp4")])) == [str(tree / ".hidden.mp4")]
    assert list(list_sources([str(tree / "g*.mp4")]).skipped) == [str(tree / "gone.mp4")]


def test_filtered_files_are_only_counted(tree):
    listing = list_sources([str(tree)], exclude=("sub/*", "empty*"))
    assert uris(listing) == [str(tree / "a.mp4")]
    assert listing.excluded == 5 and list(listing.skipped) == [str(tree / ".cache"), str(tree / ".hidden.mp4"),
                                                               str(tree / "notes.txt")]
    assert listing.skip_counts() == {"excluded": 5, "hidden": 2, "not_a_video": 1}


def test_an_unreadable_folder_is_skipped_with_the_reason(tree, monkeypatch):
    real = os.scandir

    def scandir(path):  # tests run as root, for whom chmod 000 changes nothing
        if str(path) == str(tree / "sub" / "deeper"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    listing = list_sources([str(tree)])
    assert listing.skipped[str(tree / "sub" / "deeper")] == ("unreadable: permission denied (a folder: nothing "
                                                             "below it listed)")
    assert str(tree / "sub" / "with space é.mp4") in uris(listing)


def test_the_output_folder_is_never_listed(tmp_path):
    data = tmp_path / "data"
    write_video(data / "v.mp4", 3)
    out = data / "out"
    (out / "frames").mkdir(parents=True)
    (out / "frames" / "part-0.parquet").write_bytes(b"PAR1")
    write_video(out / "looks like a video.mp4", 3)
    (data / "to_out").symlink_to("out")  # another way in
    (data / "out_file.mp4").symlink_to("out/looks like a video.mp4")
    for ours in (str(out), f"file://{out}", os.path.relpath(out)):
        listing = list_sources([str(data)], exclude_roots=(ours,))
        assert uris(listing) == [str(data / "v.mp4")]
        assert listing.skipped == {} and listing.excluded == 0 and listing.warnings == []
    named_inside = list_sources([str(out / "looks like a video.mp4")], exclude_roots=(str(out),))
    assert uris(named_inside) == [] and len(named_inside.warnings) == 1  # a name given: said why, not silent
    assert "inside this run's output" in named_inside.warnings[0]
    assert len(uris(list_sources([str(data)]))) == 2  # without it: the video in out/ (the link is a duplicate)
