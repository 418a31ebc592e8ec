"""Faults survived with the real parts: Triton killed and restarted mid-run, a Ray worker killed
mid-video. Every video ends labelled with every frame exactly once: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

import decord
from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO, run_label_archive
from emoframe.flows.analysis.query import connect
from tests.reliability import frame_accounting, record
from emoframe.training.synth import make_video
from emoframe.workers.serving.triton_server import EmbeddedTriton

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_videos")
    (root / "videos").mkdir()
    (root / "annotations").mkdir()
    for i in range(4):
        make_video(root, 31, i, min_seconds=12, max_seconds=16, no_audio_fraction=0.0)
    return root / "videos"


def wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def label_worker() -> psutil.Process | None:
    """A Ray worker of this test's local Ray (a descendant of this process: other runs on the machine have
    their own) running a video task: a video is in progress."""
    for p in psutil.Process().children(recursive=True):
        try:
            if "ray::label_videos" in " ".join(p.cmdline()):
                return p
        except psutil.Error:  # exited meanwhile
            continue
    return None


def assert_complete(out, videos, fault: str) -> None:
    """Every frame of every video exactly once, every video labelled; recorded for the README's table."""
    con = connect(str(out))
    expected = {str(p): len(decord.VideoReader(str(p))) for p in sorted(videos.glob("*.mp4"))}
    figures = frame_accounting(con, expected)
    record("fault", fault, "run completed", **figures)
    assert figures == {"lost": 0, "duplicated": 0, "healthy_failed": 0}, figures
    status = con.sql("SELECT status, count(*) FROM videos GROUP BY 1").fetchall()
    assert status == [("labelled", len(expected))]


def test_triton_killed_and_restarted_during_a_run(videos, tmp_path):
    out = tmp_path / "out"
    server = EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=tmp_path / "a.log").start()
    ports = (int(server.http_url.rsplit(":", 1)[1]), int(server.grpc_url.rsplit(":", 1)[1]))
    events: dict[str, float] = {}
    restarted: list[EmbeddedTriton] = []

    def chaos() -> None:
        wait_for(lambda: label_worker() is not None, 240, "a video in progress")
        os.killpg(server.pid, signal.SIGKILL)  # no graceful shutdown: the server just dies
        events["killed"] = time.monotonic()
        time.sleep(3)
        restarted.append(EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=tmp_path / "b.log", ports=ports).start())
        events["restarted"] = time.monotonic()

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    try:
        result = run_label_archive([str(videos)], str(out), triton_url=server.grpc_url)
        t.join(60)
    finally:
        server.stop()
        for s in restarted:
            s.stop()
    assert "killed" in events and "restarted" in events
    assert result["labelled"] == 4 and result["failed"] == 0
    assert_complete(out, videos, "Triton SIGKILLed mid-run, restarted 3 s later on the same port")


def test_ray_worker_killed_mid_video(videos, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []

    def chaos() -> None:
        found: list[psutil.Process] = []

        def into_a_video() -> bool:
            # The same worker still on a video 0.5 s after it was seen on one: past the task's start, and
            # not between two short videos (a 12 s clip labels in about a second).
            p = label_worker()
            if p is None:
                return False
            time.sleep(0.5)
            if label_worker() != p:
                return False
            found.append(p)
            return True

        wait_for(into_a_video, 240, "a Ray worker labelling a video")
        found[-1].kill()  # SIGKILL: Ray sees a dead worker and retries the task
        killed.append(found[-1].pid)

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    result = run_label_archive([str(videos)], str(out))
    t.join(30)
    assert killed
    assert result["labelled"] == 4 and result["failed"] == 0, result["text"]
    assert_complete(out, videos, "a Ray worker SIGKILLed mid-video")


def test_model_unloaded_and_reloaded_on_a_shared_triton_during_a_run(videos, tmp_path):
    """A shared Triton reloading the model answers NOT_FOUND meanwhile: the videos in flight wait and
    finish; none is charged an attempt or left failed."""
    import tritonclient.grpc as grpcclient

    from emoframe.workers.spec.contract import MODEL_NAME

    from tests.test_deploy import ServiceProcesses, standalone_triton

    out = tmp_path / "out"
    events: dict[str, float] = {}

    def chaos(url: str) -> None:
        wait_for(lambda: label_worker() is not None, 240, "a video in progress")
        time.sleep(2)  # into the video: its requests are under way
        admin = grpcclient.InferenceServerClient(url)
        admin.unload_model(MODEL_NAME)
        events["unloaded"] = time.monotonic()
        time.sleep(20)
        admin.load_model(MODEL_NAME)
        events["reloaded"] = time.monotonic()

    procs = ServiceProcesses({})
    try:
        # The shared server as a user runs one for --triton-url: `emoframe triton`.
        with standalone_triton(procs, tmp_path) as (_, url):
            t = threading.Thread(target=chaos, args=(url,), daemon=True)
            t.start()
            result = run_label_archive([str(videos)], str(out), triton_url=url)
            finished = time.monotonic()
            t.join(60)
    finally:
        procs.end_all()
    assert "unloaded" in events and events["reloaded"] < finished  # the model was away while videos were in flight
    assert result["labelled"] == 4 and result["failed"] == 0, result["text"]
    assert_complete(out, videos, "the model unloaded for 20 s on a shared Triton (NOT_FOUND meanwhile), then reloaded")


def test_a_worker_killed_until_the_task_budget_is_spent_leaves_a_retryable_row_and_the_rerun_labels(videos,
                                                                                                    tmp_path):
    """Every try of one video killed (Ray's worker, SIGKILL): the run records the video as failed for a
    reason outside the file (`internal_error`, with the real last error), exits with the failure counted,
    and the next run labels it: nothing is held against a healthy file."""
    one = tmp_path / "one"
    one.mkdir()
    clip = sorted(videos.glob("*.mp4"))[0]
    (one / clip.name).write_bytes(clip.read_bytes())
    out = tmp_path / "out"
    stop = threading.Event()
    killed: list[int] = []

    def chaos() -> None:
        while not stop.is_set():
            p = label_worker()
            if p is not None and p.pid not in killed:
                time.sleep(0.5)
                try:
                    p.kill()
                    killed.append(p.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.1)

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    try:
        first = run_label_archive([str(one)], str(out), face_mode="centred")
    finally:
        stop.set()
        t.join(10)
    assert len(killed) >= 4  # the first try and Prefect's 3 retries
    assert (first["labelled"], first["failed"], first["problems"]) == (0, 1, 1), first["text"]
    row = connect(str(out)).execute("SELECT error_reason, error_message FROM videos").fetchone()
    assert row[0] == "internal_error" and "retried on the next run" in row[1], row
    second = run_label_archive([str(one)], str(out), face_mode="centred")
    assert (second["labelled"], second["failed"], second["problems"]) == (1, 0, 0), second["text"]
    assert connect(str(out)).execute("SELECT status FROM videos").fetchall() == [("labelled",)]
    assert_complete(out, one, f"every try of a video's task SIGKILLed ({len(killed)} workers), then a rerun")
