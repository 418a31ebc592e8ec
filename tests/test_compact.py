"""Compaction and the state area: rows written by the real writers (workers/output/sink.py) into a real folder (and
a real S3 server, SeaweedFS), compacted, then read back through `emoframe query`'s views, the ledger, a plain
pyarrow dataset; relabels, prunes, moves and skips of compacted videos; compactions killed half-way (an
exception at each step, and SIGKILL of a subprocess); the lease that keeps compaction away from a run."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from emoframe.flows.archive.compact import compact
from emoframe.flows.archive.ledger import DoneKey, read_ledger
from emoframe.flows.archive.moves import adopt_labels, find_gone, fingerprinted, prune, remove_moved
from emoframe.flows.analysis.query import connect
from emoframe.flows.run.records import record_skipped
from emoframe.workers.spec.contract import NUM_CLASSES, fingerprint
from emoframe.workers.inference.labeling import Predictions
from emoframe.workers.spec.policy import POLICY
from emoframe.workers.output.rows import evict, is_compacted, read_rows, remove_frames
from emoframe.workers.spec.schema import FRAMES_SCHEMA, VIDEOS_SCHEMA, frames_path, videos_path
from emoframe.workers.output.sink import frames_table, video_row, videos_table, write_atomic
from emoframe.workers.output.state import exclusive, live_leases, run_lease, state_path
from emoframe.workers.output.storage import content_fingerprint
from emoframe.workers.task.video_task import Source

ROOT = Path(__file__).resolve().parent.parent
MV = "7"
KEY = DoneKey("detect", POLICY, fingerprint())


def _pred(n: int, seed: int) -> Predictions:
    """Two faces on the first half of the frames, none after: rows with and without a track."""
    rng = np.random.default_rng(seed)
    rows = [(f, t) for f in range(n) for t in ((0, 1) if f < n // 2 else (-1,))]
    frame = np.array([r[0] for r in rows], np.int32)
    track = np.array([r[1] for r in rows], np.int32)
    present = track >= 0
    probs = rng.dirichlet(np.ones(NUM_CLASSES), len(rows)).astype(np.float32)
    box = np.where(present[:, None], np.array([10, 20, 50, 60], np.float32), np.nan).astype(np.float32)
    return Predictions(frame, track, present, box, np.where(present, 0.9, np.nan).astype(np.float32),
                       frame % 3 > 0, present, probs, probs.argmax(1).astype(np.int16), probs.max(1))


def write_labelled(fs: pafs.FileSystem, base: str, uri: str, n: int, run_id: str = "run-1",
                   src: Source | None = None, mv: str = MV) -> None:
    """What a task writes: the frames file, then the videos row."""
    write_atomic(frames_table(uri, 25.0, _pred(n, zlib.crc32(uri.encode())), "m", run_id), fs,
                 frames_path(base, mv, uri))
    row = video_row(uri, status="labelled", model_name="m", run_id=run_id, started_at=datetime.now(timezone.utc),
                    fps=25.0, frame_count=n, face_mode=KEY.face_mode, policy=KEY.policy, contract=KEY.contract,
                    size_bytes=src.size_bytes if src else None, source_mtime=src.mtime if src else None,
                    content_hash=src.content_hash if src else None)
    write_atomic(videos_table([row]), fs, videos_path(base, mv, uri))


def write_failed(fs: pafs.FileSystem, base: str, uri: str, reason: str = "not_a_video") -> None:
    row = video_row(uri, status="failed", model_name="m", run_id="run-1", started_at=datetime.now(timezone.utc),
                    error_reason=reason, error_message="x")
    write_atomic(videos_table([row]), fs, videos_path(base, MV, uri))


def archive(fs: pafs.FileSystem, base: str, n_videos: int = 24) -> list[str]:
    """Labelled videos of different lengths and a failed one in every eight; returns the URIs."""
    uris = [f"/archive/clip {i:03d}.mp4" for i in range(n_videos)]
    for i, uri in enumerate(uris):
        if i % 8 == 7:
            write_failed(fs, base, uri)
        else:
            write_labelled(fs, base, uri, 20 + 3 * i)
    return uris


def snapshot(out: str) -> dict:
    """Every row of both tables (as `emoframe query` sees them) and the ledger's answer."""
    con = connect(out)
    rows = {t: sorted(con.sql(f"SELECT * FROM {t}").fetchall(), key=repr) for t in ("frames", "videos")}
    con.close()
    return {**rows, "ledger": read_ledger(out, MV).rows}


def copies(out: str) -> dict[str, tuple[int, int]]:
    """source_uri -> (videos rows, frames rows)."""
    con = connect(out)
    v = dict(con.sql("SELECT source_uri, count(*) FROM videos GROUP BY 1").fetchall())
    f = dict(con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall())
    con.close()
    return {u: (v.get(u, 0), f.get(u, 0)) for u in set(v) | set(f)}


def own_files(out: str) -> list[str]:
    return [p for p in glob.glob(f"{out}/*/*/*.parquet") if not is_compacted(os.path.basename(p))]


def compacted_files(out: str) -> list[str]:
    return sorted(p for p in glob.glob(f"{out}/*/*/*.parquet") if is_compacted(os.path.basename(p)))


@pytest.fixture
def out(tmp_path) -> str:
    return str(tmp_path / "out")


@pytest.fixture
def local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


def test_compaction_keeps_every_row_and_the_ledger_answer(out, local):
    archive(local, out)
    before = snapshot(out)
    res = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "compact", out],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "45 per-video files" in res.stdout  # 24 videos rows + 21 frames files
    assert own_files(out) == [] and len(compacted_files(out)) == 2
    assert snapshot(out) == before  # the same rows, once each; the same ledger
    # Sorted, so a reader skips row groups by source_uri.
    frames = pq.read_table(next(p for p in compacted_files(out) if "/frames/" in p))
    keys = list(zip(frames["source_uri"].to_pylist(), frames["frame_index"].to_pylist(),
                    [-1 if t is None else t for t in frames["track_id"].to_pylist()]))
    assert keys == sorted(keys)
    assert pq.read_schema(compacted_files(out)[0]).equals(FRAMES_SCHEMA, check_metadata=True)
    assert pq.read_schema(compacted_files(out)[1]).equals(VIDEOS_SCHEMA, check_metadata=True)
    # Nothing left in the state area but empty folders; plain readers of the folder are happy.
    assert [p for p in Path(out, "_state").rglob("*") if p.is_file()] == []
    Path(out, "_report").mkdir()
    Path(out, "_report", "index.html").write_text("<html></html>")
    assert ds.dataset(f"{out}/frames", partitioning="hive").count_rows() == len(before["frames"])
    assert pq.read_table(f"{out}/videos").num_rows == len(before["videos"])  # what pandas.read_parquet does
    assert ds.dataset(out, format="parquet").count_rows() == len(before["frames"]) + len(before["videos"])
    # A second compaction with new per-video files merges the small compacted files in.
    write_labelled(local, out, "/archive/new.mp4", 30)
    after_new = snapshot(out)
    assert "2 earlier compacted files" in compact(out).format()
    assert own_files(out) == [] and len(compacted_files(out)) == 2 and snapshot(out) == after_new


def test_reading_and_removing_one_video_wherever_its_rows_are(out, local):
    uris = archive(local, out, 10)
    own = read_rows(local, out, MV, uris[3], "frames")
    compact(out)
    assert read_rows(local, out, MV, uris[3], "frames").equals(own)
    assert read_rows(local, out, MV, "/archive/never.mp4", "videos") is None
    remove_frames(local, out, MV, [uris[3]])
    assert copies(out)[uris[3]] == (1, 0)
    assert copies(out)[uris[4]] == (1, 32 + 16)  # its neighbour untouched (32 frames, the first half with 2 faces)


def test_a_relabel_after_compaction_leaves_exactly_one_copy(out, local):
    uris = archive(local, out, 10)
    compact(out)
    target = uris[2]
    # What a run does (label_archive._plan): the rows leave the compacted files, then the task writes anew.
    assert evict(local, out, MV, [target]) > 0
    assert target not in copies(out) and read_ledger(out, MV).get(target) is None  # not done: a crash relabels it
    write_labelled(local, out, target, 40, run_id="run-2")
    got = copies(out)
    assert got[target] == (1, 40 + 20) and all(got[u][0] == 1 for u in uris)
    con = connect(out)
    assert con.sql(f"SELECT DISTINCT run_id FROM frames WHERE source_uri = '{target}'").fetchall() == [("run-2",)]
    # Compacted again: still one copy, the new one.
    compact(out)
    assert copies(out) == got and own_files(out) == []


def test_an_eviction_killed_between_its_two_tables_leaves_the_video_not_done_and_is_cleaned_up(out, local):
    """Eviction takes the videos row out first: killed before the frames, the video reads as not done (the next
    run relabels it and its eviction takes the frames), and compaction drops the orphaned frames rows."""
    uris = archive(local, out, 6)
    compact(out)
    evict(local, out, MV, [uris[0], uris[1]], tables=("videos",))  # as if killed after the first table
    assert read_ledger(out, MV).get(uris[0]) is None and copies(out)[uris[0]] == (0, 20 + 10)
    assert evict(local, out, MV, [uris[0]]) == 20 + 10  # the next run's eviction of what it relabels
    write_labelled(local, out, "/archive/new.mp4", 8, run_id="run-2")  # something new, so there is work to do
    result = compact(out)
    assert result.partitions[0].dropped_frames == 23 + 11  # uris[1]'s orphaned rows
    got = copies(out)
    assert uris[0] not in got and uris[1] not in got and got["/archive/new.mp4"] == (1, 8 + 4)
    assert all(got[u] == (1, 20 + 3 * i + (20 + 3 * i) // 2) for i, u in enumerate(uris[2:], 2) if i != 7)


def test_the_run_plan_evicts_what_it_relabels_and_skips(tmp_path, out, local):
    """The run's Planner with --force on a compacted output, no services: every source leaves the compacted
    files before its task is submitted; a file turned into a non-video gets its skipped row and loses frames."""
    from emoframe.flows.run.planning import Planner
    from emoframe.flows.run.run_summary import RunSummary
    from emoframe.flows.archive.sources import Listing
    from emoframe.workers.task.video_job import LabelConfig

    folder = tmp_path / "in"
    folder.mkdir()
    srcs = []
    for i in range(4):
        p = folder / f"v{i}.mp4"
        p.write_bytes(os.urandom(1000 + i))
        srcs.append(Source(str(p), p.stat().st_size, str(p.stat().st_mtime_ns)))
        write_labelled(local, out, str(p), 10 + i, src=srcs[-1])
    compact(out)
    cfg = LabelConfig(out=out, run_id="run-2", triton_url="unused:1", model_version=MV)
    planner = Planner(cfg, True, RunSummary("run-2", out, MV, POLICY))
    todo = planner.plan(srcs[:3])
    planner.record_skipped(Listing(skipped={srcs[3].uri: "not_a_video: no signature"}))
    assert [s.uri for s in todo] == [s.uri for s in srcs[:3]]
    assert copies(out) == {srcs[3].uri: (1, 0)}  # the three to label are absent until their tasks write
    assert read_ledger(out, MV).get(srcs[3].uri)["status"] == "skipped"


def test_prune_and_a_move_on_compacted_videos(tmp_path, out, local):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [folder / f"v{i}.mp4" for i in range(4)]
    for p in paths:
        p.write_bytes(os.urandom(5000))
    srcs = [Source(str(p), p.stat().st_size, str(p.stat().st_mtime_ns), content_fingerprint(str(p))) for p in paths]
    for s in srcs:
        write_labelled(local, out, s.uri, 12, src=s)
    compact(out)
    # A move: v0 renamed; the run reuses its labels (read from the compacted file) and removes the old output.
    moved = folder / "sub" / "v0 renamed.mp4"
    moved.parent.mkdir()
    paths[0].rename(moved)
    new = fingerprinted([Source(str(moved), srcs[0].size_bytes, "new")])[0]
    same = read_ledger(out, MV).same_content(new.content_hash, KEY, new.uri)
    later: list[str] = []
    assert adopt_labels(out, MV, same, new, "run-2", later) is True and later == [srcs[0].uri]
    remove_moved(out, MV, later)
    got = copies(out)
    assert srcs[0].uri not in got and got[new.uri] == (1, 12 + 6)
    # Prune: v1 is gone.
    paths[1].unlink()
    gone = find_gone(out)
    assert [g.source_uri for g in gone] == [srcs[1].uri]
    prune(out, gone)
    assert set(copies(out)) == {new.uri, srcs[2].uri, srcs[3].uri}
    assert live_leases(local, out) == []  # prune's lease is released


def test_a_compacted_video_skipped_now_loses_its_frames(out, local):
    uris = archive(local, out, 6)
    compact(out)
    record_skipped({uris[0]: "not_a_video: replaced by text"}, read_ledger(out, MV), out, MV, "m", "run-2")
    assert copies(out)[uris[0]] == (1, 0)
    assert read_ledger(out, MV).get(uris[0])["status"] == "skipped"


STEPS = ["staged frames", "staged videos", "journal publish", "moved one"]


@pytest.mark.parametrize("step", STEPS)
def test_a_compaction_killed_at_each_step_is_recovered_with_nothing_lost_or_doubled(step, out, local):
    archive(local, out, 12)
    before = snapshot(out)

    def die(name: str) -> None:
        if name == step:
            raise KeyboardInterrupt(name)

    with pytest.raises(KeyboardInterrupt):
        compact(out, step=die)
    journal = glob.glob(f"{out}/_state/journal/*.json")
    assert len(journal) == 1
    if step.startswith("staged"):  # not published: readers see exactly what was there
        assert snapshot(out) == before
    # The next run recovers it as it takes its lease, before it writes anything.
    with run_lease(out, "test run", on_wait=lambda m: None):
        assert glob.glob(f"{out}/_state/journal/*.json") == []
        assert snapshot(out) == before
    rolled_forward = step in ("journal publish", "moved one")
    assert (own_files(out) == []) == rolled_forward
    assert compact(out).refused is None and snapshot(out) == before and own_files(out) == []


def test_a_sigkilled_compaction_is_rolled_forward_by_the_next_one(out, local):
    archive(local, out, 12)
    before = snapshot(out)
    code = ("import os, signal, sys\nfrom emoframe.flows.archive.compact import compact\n"
            "def die(name):\n    if name == 'moved one':\n        os.kill(os.getpid(), signal.SIGKILL)\n"
            "compact(sys.argv[1], step=die)\n")
    res = subprocess.run([sys.executable, "-c", code, out], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, res.stderr
    assert len(glob.glob(f"{out}/_state/lock/*.json")) == 1  # the dead holder's claim is left behind...
    result = compact(out, wait_s=5)  # ...and seen dead at once (its pid is gone), not after the TTL
    assert result.refused is None and result.recovered and "rolled forward" in result.recovered[0]
    assert snapshot(out) == before and own_files(out) == []


def test_compaction_refuses_while_a_run_holds_a_lease_and_a_run_waits_for_a_compaction(out, local):
    archive(local, out, 6)
    with run_lease(out, "test run") as lease:
        result = compact(out)
        assert result.refused and "label run" in result.refused and own_files(out)
        cli = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "compact", out],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert cli.returncode == 75 and "compaction waits for them" in cli.stderr and own_files(out)
        assert compact(out, ignore_leases=frozenset({lease.record["id"]})).refused is None  # the run's own call
    write_labelled(local, out, "/archive/after.mp4", 10)
    # A lease of a dead process on this host does not block; one of another host blocks until its TTL.
    folder = state_path(out, "leases")
    dead = {"id": "dead", "kind": "run", "host": os.uname().nodename, "pid": 2 ** 22 + 7, "heartbeat": time.time(),
            "ttl_s": 120}
    Path(folder, "dead.json").write_text(json.dumps(dead))
    assert compact(out).refused is None
    write_labelled(local, out, "/archive/after2.mp4", 10)
    Path(folder, "far.json").write_text(json.dumps({**dead, "id": "far", "host": "elsewhere"}))
    assert compact(out).refused
    Path(folder, "far.json").write_text(json.dumps({**dead, "id": "far", "host": "elsewhere",
                                                    "heartbeat": time.time() - 121}))
    assert compact(out).refused is None and own_files(out) == []
    # A run that starts during a compaction waits for it to finish before it writes.
    events: list[str] = []

    def run() -> None:
        events.append("run starts")
        with run_lease(out, on_wait=events.append):
            events.append("run writes")

    with exclusive(local, out, "compact", "a slow compaction"):
        t = threading.Thread(target=run)
        t.start()
        time.sleep(2.5)
        events.append("compaction ends")
    t.join(timeout=30)
    assert events[0] == "run starts" and events[1].startswith("waiting for the compaction")
    assert events[2:] == ["compaction ends", "run writes"]


def test_the_lock_admits_one_holder_at_a_time(out, local):
    inside, most, lock = [0], [0], threading.Lock()

    def contend() -> None:
        for _ in range(3):
            with exclusive(local, out, "evict", timeout_s=60):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.05)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert most[0] == 1 and not any(t.is_alive() for t in threads)


@pytest.mark.integration
def test_compaction_in_a_bucket(request, tmp_path):
    """SeaweedFS: no rename (a move is copy + delete). Compaction, a relabel, and a killed compaction rolled
    forward, all read back through `emoframe query`'s bucket path."""
    server = request.getfixturevalue("s3_server")
    fs = server.filesystem()
    base = f"{server.bucket}/compact-{tmp_path.name}"
    out = server.uri(f"compact-{tmp_path.name}")
    from emoframe.workers.output.storage import filesystem_for

    env_fs, _ = filesystem_for(out)  # the client the code builds from the environment
    uris = archive(env_fs, base, 10)
    before = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        compact(out, step=lambda name: (_ for _ in ()).throw(KeyboardInterrupt()) if name == "moved one" else None)
    result = compact(out)
    assert result.refused is None and result.recovered and snapshot(out) == before
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if i.type == pafs.FileType.File]
    assert sorted(n for n in names if n.endswith(".parquet")) and all(is_compacted(n) for n in names
                                                                      if n.endswith(".parquet"))
    assert not [n for n in names if n.endswith(".json")]  # no lease, claim or journal left
    evict(env_fs, base, MV, [uris[0]])
    write_labelled(env_fs, base, uris[0], 33, run_id="run-2")
    assert copies(out)[uris[0]] == (1, 33 + 16)
    assert read_ledger(out, MV).get(uris[0])["run_id"] == "run-2"


