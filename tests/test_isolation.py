"""The decode watchdog: hangs, crashes and memory blow-ups end as failure rows within the limits, each
file has an attempt budget, and no process is left behind."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.media import write_video
from workers.errors import BadInputError
from workers.isolation import Limits, run_isolated
from workers.video_task import LabelConfig, Source, label_video


def _sleep_forever(progress):
    progress(0)
    time.sleep(3600)


def _ok(x, progress):
    progress(1)
    return x * 2


def _steady(frames, seconds, progress):
    """Keeps reporting progress (never stalls) for ``seconds``, on a video of ``frames`` frames."""
    progress(0, frames)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        progress(1)
        time.sleep(0.1)
    return "done"


def _bad(progress):
    raise BadInputError("not_a_video", "nope")


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def test_result_and_bad_input_cross_the_process_boundary():
    assert run_isolated(_ok, (21,)) == 42
    with pytest.raises(BadInputError) as e:
        run_isolated(_bad, ())
    assert e.value.reason == "not_a_video"


def test_a_stalled_child_is_killed_within_the_stall_limit():
    t = time.monotonic()
    with pytest.raises(BadInputError) as e:
        run_isolated(_sleep_forever, (), Limits(stall_timeout_s=2, timeout_s=60))
    assert e.value.reason == "decode_stalled" and time.monotonic() - t < 10


def test_the_overall_limit_scales_with_the_video_and_names_how_to_raise_it():
    """A child that keeps making progress is stopped by the overall limit, frames / min_fps: 20 frames at
    10 frames/s = 2 s; the same work on a 200-frame video (20 s allowed) finishes."""
    limits = Limits(min_fps=10, min_timeout_s=0.5, stall_timeout_s=30)
    t = time.monotonic()
    with pytest.raises(BadInputError) as e:
        run_isolated(_steady, (20, 6), limits)
    assert e.value.reason == "decode_timeout" and 1.5 < time.monotonic() - t < 5
    assert "20 frames at --min-fps 10" in e.value.message and "--video-timeout" in e.value.message
    assert run_isolated(_steady, (200, 4), limits) == "done"
    with pytest.raises(BadInputError, match="the --video-timeout of 1 s"):
        run_isolated(_steady, (200, 4), Limits(timeout_s=1, stall_timeout_s=30))
    with pytest.raises(ValueError, match="--min-fps"):
        Limits(min_fps=0)


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "in" / "clip.mp4", 60, 15)


def cfg(tmp_path, decoder, **limits):
    # The decoder misbehaves before any Triton call, so no server is needed for these.
    return LabelConfig(out=str(tmp_path / "out"), run_id="t", triton_url="127.0.0.1:9", model_version="1",
                       chunk_frames=16, decoder=f"tests.faulty:{decoder}", limits=Limits(**limits), max_attempts=2)


@pytest.mark.parametrize("decoder,reason,limits", [
    ("HangingDecoder", "decode_stalled", {"stall_timeout_s": 3}),
    ("CrashingDecoder", "decode_crash", {}),
    ("LeakingDecoder", "too_large", {"memory_mb": 600}),
])
def test_misbehaving_decoder_gives_a_failure_row_and_leaves_nothing_behind(tmp_path, clip, decoder, reason, limits):
    before = _children()
    t = time.monotonic()
    out = label_video(Source(str(clip), clip.stat().st_size, "m"), cfg(tmp_path, decoder, **limits))
    assert out.row["status"] == "failed" and out.row["error_reason"] == reason, out.row
    if reason != "too_large":  # crashes and hangs are retried within the budget: 2 attempts
        assert "gave up after 2 attempts" in out.row["error_message"]
    assert time.monotonic() - t < 60
    time.sleep(0.5)
    assert _children() <= before | _forkserver()
    assert not list((tmp_path / "out").rglob("*.json"))  # the attempt counter is cleared


def _forkserver() -> set[int]:
    return {p.pid for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())}


def test_attempt_budget_survives_dead_workers(tmp_path, clip):
    """A worker killed outright (no exception reaches us) still counts: after the budget, a failure row."""
    c = cfg(tmp_path, "VideoDecoder")
    from workers.video_task import _Attempts

    a = _Attempts(c, str(clip))
    a.start()
    a.start()  # two attempts started by workers that died
    out = label_video(Source(str(clip), 1, "m"), c)
    assert out.row["error_reason"] == "too_many_attempts" and "gave up after 2 attempts" in out.row["error_message"]
