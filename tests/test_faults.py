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
from flows.label_archive import DEFAULT_MODEL_REPO, run_label_archive
from flows.query import connect
from training.synth import make_video
from workers.triton_server import EmbeddedTriton

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


def in_progress(out) -> bool:
    return any((out / "_attempts").rglob("*.json")) if (out / "_attempts").exists() else False


def assert_complete(out, videos) -> None:
    con = connect(str(out))
    rows = con.sql("SELECT source_uri, count(*), count(DISTINCT frame_index) FROM frames GROUP BY 1").fetchall()
    assert len(rows) == len(list(videos.glob("*.mp4")))
    for uri, n, distinct in rows:
        assert n == distinct == len(decord.VideoReader(uri)), uri  # none lost, none duplicated
    status = con.sql("SELECT status, count(*) FROM videos GROUP BY 1").fetchall()
    assert status == [("labelled", len(rows))]


def test_triton_killed_and_restarted_during_a_run(videos, tmp_path):
    out = tmp_path / "out"
    server = EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=tmp_path / "a.log").start()
    ports = (int(server.http_url.rsplit(":", 1)[1]), int(server.grpc_url.rsplit(":", 1)[1]))
    events: dict[str, float] = {}
    restarted: list[EmbeddedTriton] = []

    def chaos() -> None:
        wait_for(lambda: in_progress(out), 240, "a video in progress")
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
    assert_complete(out, videos)


def test_ray_worker_killed_mid_video(videos, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []

    def chaos() -> None:
        def victim():
            for p in psutil.process_iter(["cmdline"]):
                if "ray::label_one" in " ".join(p.info["cmdline"] or []):
                    return p
            return None

        wait_for(lambda: in_progress(out) and victim() is not None, 240, "a Ray worker labelling a video")
        p = victim()
        p.kill()  # SIGKILL: Ray sees a dead worker and retries the task
        killed.append(p.pid)

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    result = run_label_archive([str(videos)], str(out))
    t.join(30)
    assert killed
    assert result["labelled"] == 4 and result["failed"] == 0, result["text"]
    assert_complete(out, videos)
    assert not list((out / "_attempts").rglob("*.json"))
