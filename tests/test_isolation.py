"""The decode watchdog: hangs, crashes and memory blow-ups end as failure rows within the limits, each
file has an attempt budget, and no process is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.media import write_video
from emoframe.workers.spec.errors import BadInputError
from emoframe.workers.processes.isolation import Limits, run_isolated
from emoframe.workers.task.video_task import LabelConfig, Source, label_video


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


MAIN_SCRIPT = textwrap.dedent("""
    import os

    import heavy_marker  # noqa: F401 -- stands in for what a real main imports (ray, prefect)
    from emoframe.workers.processes.isolation import run_isolated


    def child_pid(progress):
        return os.getpid()


    if __name__ == "__main__":
        print(" ".join(str(run_isolated(child_pid, ())) for _ in range(3)))
""")


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_child_does_not_import_again_what_the_main_module_imports(tmp_path, how):
    """Each child runs the process's main module again before it starts; what that imports is loaded once, in
    the forkserver (a Ray worker's main imports ray: 1.2 s a video when each child imported it)."""
    log = tmp_path / "imports.log"
    (tmp_path / "heavy_marker.py").write_text("import os\n\nwith open(os.environ['MARKER_LOG'], 'a') as f:\n"
                                              "    f.write(f'{os.getpid()}\\n')\n")
    (tmp_path / "main_script.py").write_text(MAIN_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "main_script.py"] if how == "script" else [sys.executable, "-m", "main_script"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MARKER_LOG": str(log), "PYTHONPATH": f"{tmp_path}:{root}"})
    assert done.returncode == 0, done.stderr[-2000:]
    children = set(done.stdout.split())
    importers = log.read_text().split()
    assert len(children) == 3, done.stdout  # three children ran
    assert not children & set(importers), (importers, children)  # none of them imported it
    assert len(importers) == 2, importers  # the main process and the forkserver, once each


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
        assert "(2 times in a row; gave up)" in out.row["error_message"]
    assert time.monotonic() - t < 60
    time.sleep(0.5)
    assert _children() <= before | _forkserver()


def _forkserver() -> set[int]:
    return {p.pid for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())}


def test_a_crash_that_does_not_repeat_costs_one_attempt_and_the_real_error_is_kept(tmp_path, clip):
    out = label_video(Source(str(clip), clip.stat().st_size, "m"), cfg(tmp_path, "CrashOnceDecoder"))
    assert (clip.parent / "clip.mp4.crashed").exists()  # the first attempt did crash
    assert out.row["error_reason"] == "corrupt_frames" and out.row["error_message"] == "frame 3 is corrupt"


def test_nothing_is_charged_or_left_behind_by_a_video_that_was_never_finished(tmp_path, clip):
    """Attempts live in the task, not in the output: a killed run leaves no counter that a later run would
    hold against a healthy file."""
    out = label_video(Source(str(clip), clip.stat().st_size, "m"), cfg(tmp_path, "CrashingDecoder"))
    assert out.row["error_reason"] == "decode_crash"
    assert sorted(p.relative_to(tmp_path / "out").parts[0] for p in (tmp_path / "out").rglob("*.*")) == ["videos"]


def _counting(frames, progress):
    progress(0, frames)
    for n in range(16, frames + 1, 16):
        progress(n)
    return "done"


def test_the_childs_progress_reaches_the_caller_and_drives_the_bar():
    from emoframe.workers.task.progress import VideoProgress

    class Bar:  # what tqdm and Ray's tqdm are to VideoProgress: a total and updates
        total, n, closed = None, 0, False

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    bar, shares, now = Bar(), [], [0.0]
    progress = VideoProgress("clip.mp4", bar=bar, artifact=shares.append, clock=lambda: now[0])
    seen = []

    def on_progress(n, total):
        seen.append((n, total))
        now[0] += 2.0  # two seconds between chunks: a Prefect artifact update every 5 s at most
        progress(n, total)

    assert run_isolated(_counting, (96,), on_progress=on_progress) == "done"
    progress.close()
    assert seen[0] == (0, 96) and [n for n, _ in seen[1:]] == list(range(16, 97, 16))
    assert (bar.total, bar.n, bar.closed) == (96, 96, True)
    # Throttled, the first one period in (a short video makes no artifact at all), and ends at 100 %.
    assert shares[0] == round(100 * 32 / 96, 1) and shares[-1] == 100.0 and len(shares) < len(seen)


def test_a_video_done_within_one_artifact_period_makes_no_prefect_artifact():
    from emoframe.workers.task.progress import VideoProgress

    shares, now = [], [0.0]
    progress = VideoProgress("clip.mp4", artifact=shares.append, clock=lambda: now[0])
    for n in (0, 16, 24):
        now[0] += 1.0
        progress(n, 24)
    progress.close()
    assert shares == []


def test_a_ray_worker_reports_progress_as_lines_with_rate_and_time_left():
    from emoframe.workers.task.progress import LineProgress

    now, lines = [0.0], []
    bar = LineProgress("interview.mp4", every_s=15, clock=lambda: now[0], write=lines.append)
    bar.total = 4320
    for _ in range(16):  # 256 frames every 8 s: 32 frames/s
        now[0] += 8
        bar.update(256)
    assert len(lines) == 8  # a line per 15 s at most, not one per chunk
    assert lines[0] == "interview.mp4: 512/4,320 frames, 32.0 frames/s, 1 min 59 s left"
    assert lines[-1] == "interview.mp4: 4,096/4,320 frames, 32.0 frames/s, 7 s left"
    bar.update(300)
    now[0] += 16
    bar.update(0)
    assert lines[-1] == "interview.mp4: 4,396/4,320 frames, 30.5 frames/s"  # past the declared count: no time left


def test_a_labelled_file_that_fails_now_loses_its_old_frames(tmp_path, clip):
    """The failed row must not stand beside labels of the file's earlier content."""
    from emoframe.workers.spec.schema import frames_path

    c = cfg(tmp_path, "CrashingDecoder")
    stale = frames_path(c.out, c.model_version, str(clip))
    os.makedirs(os.path.dirname(stale))
    open(stale, "wb").close()  # what an earlier run wrote
    out = label_video(Source(str(clip), clip.stat().st_size, "m"), c)
    assert out.row["status"] == "failed" and not os.path.exists(stale)


RAY_WORKER_SCRIPT = textwrap.dedent("""
    import os, sys
    import ray
    from emoframe.flows.run.ray_runtime import worker_runtime_env

    @ray.remote
    def forkservers_of_this_worker():
        me, found = str(os.getpid()), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
                cmd = open(f"/proc/{pid}/cmdline").read()
            except OSError:
                continue
            if ppid == me and "forkserver" in cmd:
                found.append(pid)
        return found

    ray.init(address="local", num_cpus=1, include_dashboard=False, runtime_env=worker_runtime_env({}))
    print(len(ray.get(forkservers_of_this_worker.remote())))
    ray.shutdown()
""")


def test_a_ray_worker_has_its_forkserver_running_before_its_first_video():
    """The forkserver's imports (about 2 s of a core) are paid as the worker starts, not in the first video's
    time: the run's runtime env starts it from Ray's worker setup hook. Real Ray, in its own process."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", RAY_WORKER_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1", done.stdout  # the task ran nothing isolated, yet one is running


def test_the_setup_hook_is_left_out_when_a_submitted_job_brings_its_own(monkeypatch):
    import json

    from emoframe.flows.run.ray_runtime import worker_runtime_env
    from emoframe.workers.processes.isolation import WORKER_SETUP_HOOK

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert worker_runtime_env({"A": "1"}) == {"env_vars": {"A": "1"}, "worker_process_setup_hook": WORKER_SETUP_HOOK}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"worker_process_setup_hook": "theirs.setup"}}))
    assert worker_runtime_env({}) == {}  # Ray refuses two hooks: theirs runs, ours starts at the first video
