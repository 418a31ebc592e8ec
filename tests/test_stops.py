"""Stopping a run: Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM, and SIGKILL of
the `emoframe label` process alone. The real CLI, the real services (temporary Prefect server, local Ray,
embedded Triton) and real MP4 files; afterwards nothing the run started is left running or on disk, and a rerun
finishes the job with every frame labelled exactly once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from emoframe.flows.analysis.query import connect
from tests.reliability import frame_accounting, record
from tests.media import write_video
from emoframe.workers.processes.lifeline import sweep

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
FRAMES = {f"v{i}.mp4": 45 + 15 * i for i in range(6)}  # several videos: the signal lands with some in flight
SERVICE_NAMES = ("tritonserver", "triton_python_backend_stub", "uvicorn", "gcs_server", "raylet")


@pytest.fixture
def videos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for name, n in FRAMES.items():
        write_video(folder / name, n, 15, audio_seconds=n / 15 if n % 2 else None)
    return folder


def _label(videos: Path, out: Path, log: Path) -> subprocess.Popen:
    """`emoframe label` in a session of its own: its process group is what a terminal would signal."""
    return subprocess.Popen([sys.executable, "-m", "emoframe.flows.cli.main", "label", str(videos), "--out", str(out),
                             "--faces", "centred"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before printing {text!r}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {text!r} after {timeout_s} s:\n{log.read_text()}")
        time.sleep(0.5)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited (or a zombie) meanwhile
        return ""


def _services(proc: subprocess.Popen) -> list[psutil.Process]:
    """The services below the run: Triton and its stubs, the Prefect server, Ray's GCS and raylet."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    return [p for p in kids if any(n in _cmdline(p) for n in SERVICE_NAMES)]


def _gone(procs: list[psutil.Process], timeout_s: float) -> list[str]:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [_cmdline(p)[:120] for p in alive]


def _leftovers(pid: int) -> list[str]:
    """Files a run named after its pid (workers/processes/lifeline.py): its Triton work folder, shared memory."""
    import tempfile

    return [str(p) for d in (Path(tempfile.gettempdir()), Path("/dev/shm")) for p in d.iterdir()
            if p.name.startswith((f"emoframe-triton-{pid}-", f"emoframe{pid}_"))]


def _labelled(out: Path) -> dict[str, str]:
    """source_uri -> run_id of the videos the output holds as labelled (none before any video finished)."""
    if not (out / "videos").exists():
        return {}
    return dict(connect(str(out)).sql("SELECT source_uri, run_id FROM videos WHERE status = 'labelled'").fetchall())


def _rerun_completes(videos: Path, out: Path, log: Path, fault: str) -> dict[str, str]:
    """Reruns and checks it labels exactly what the stopped runs left: the videos done before keep their rows
    (their run id), the others are labelled by the rerun, every frame once. Returns what was done before."""
    before = _labelled(out)
    proc = _label(videos, out, log)
    assert proc.wait(timeout=900) == 0, log.read_text()
    text = log.read_text()
    m = re.search(r"^run (\S+): (\d+) labelled, (\d+) failed, (\d+) already done", text, re.MULTILINE)
    assert m, text
    left = {str(videos / name) for name in FRAMES} - set(before)
    assert (int(m[2]), int(m[3]), int(m[4])) == (len(left), 0, len(before)), text
    after = _labelled(out)
    assert {u: r for u, r in after.items() if u in before} == before  # not relabelled
    assert {u for u, r in after.items() if r == m[1]} == left  # the rerun labelled only what was left
    con = connect(str(out))
    rows = dict(con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall())
    assert rows == {str(videos / name): n for name, n in FRAMES.items()}  # none lost, none twice
    figures = frame_accounting(con, {str(videos / name): n for name, n in FRAMES.items()})
    record("fault", fault, "rerun completed", **figures)
    assert figures == {"lost": 0, "duplicated": 0, "healthy_failed": 0}, figures
    return before


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted: "),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM: ")])
def test_a_signal_stops_the_run_in_seconds_with_one_line(sig, code, said, videos, tmp_path):
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = _label(videos, out, log)
    _wait_for(log, "[1/", proc)
    services = _services(proc)
    assert any("tritonserver" in _cmdline(p) for p in services), "Triton should be running by now"
    # Triton and the temporary Prefect server answer on loopback only (Ray's own ports: README's table).
    binds = {name: {c.laddr.ip.removeprefix("::ffff:") for p in services if name in _cmdline(p)
                    for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
             for name in ("tritonserver", "uvicorn")}
    assert binds == {"tritonserver": {"127.0.0.1"}, "uvicorn": {"127.0.0.1"}}, binds
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():  # Ray writes it when token auth is on (the default of the pinned Ray)
        assert token.stat().st_mode & 0o777 == 0o600
    os.killpg(proc.pid, sig)
    t0 = time.monotonic()
    assert proc.wait(timeout=120) == code, log.read_text()
    took = time.monotonic() - t0
    text = log.read_text()
    last = text.strip().splitlines()[-1]
    assert last.startswith(said) and "rerun the same command to continue" in last, text
    assert "Traceback" not in text, text
    assert _gone(services, 15) == [], f"still running after the run stopped ({took:.0f} s to stop)"
    assert _leftovers(proc.pid) == []
    done = _rerun_completes(videos, out, tmp_path / "rerun.log",
                            f"{signal.Signals(sig).name} to the run's process group")
    assert 0 < len(done) < len(FRAMES)  # stopped mid-way: the rerun had some, not all, left to label


def _video_in_flight(proc: subprocess.Popen) -> bool:
    """A Ray worker of this run (its local Ray is below it) running a video task."""
    try:
        return any("ray::label_videos" in _cmdline(p) for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("moments", [("videos found", "in flight", "[1/")])
def test_sigkill_at_three_moments_then_a_rerun_finishes_with_nothing_lost_or_failed(moments, videos, tmp_path):
    """SIGKILL runs no handler: the services notice their parent died (PR_SET_PDEATHSIG), what is left on disk
    carries the dead run's pid, so the next run removes it, and no attempt is charged to the videos that were
    in flight: killed while services start, while the first videos are being labelled, and after one finished."""
    out = tmp_path / "out"
    killed = []
    for i, moment in enumerate(moments):
        log = tmp_path / f"run{i}.log"
        proc = _label(videos, out, log)
        if moment == "in flight":
            _wait_for(log, "videos found", proc)
            deadline = time.monotonic() + 300
            while not _video_in_flight(proc) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert _video_in_flight(proc), log.read_text()
        else:
            _wait_for(log, moment, proc)
        services = _services(proc)
        proc.kill()
        proc.wait()
        killed.append(proc.pid)
        assert _gone(services, 30) == [], moment
    assert any(_leftovers(pid) for pid in killed), "a killed run's Triton work folder is expected until a sweep"
    done = _rerun_completes(videos, out, tmp_path / "rerun.log", "SIGKILL of `emoframe label` at three moments "
                            "(services starting, first videos in flight, one video finished), then a rerun")
    assert 0 < len(done) < len(FRAMES)
    assert [_leftovers(pid) for pid in killed] == [[]] * len(killed)
    con = connect(str(out))
    assert con.execute("SELECT count(*) FROM videos WHERE status <> 'labelled'").fetchone()[0] == 0


def test_sweep_removes_only_what_dead_runs_left(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    dead = subprocess.Popen(["true"])  # a pid whose process has exited
    dead.wait()
    live = os.getpid()
    made = {f"emoframe-triton-{dead.pid}-abc": True, f"emoframe-triton-{live}-abc": False,
            "emoframe-tritonserver-xyz.log": False, "something-else": False}
    for name in made:
        (tmp_path / name).mkdir()
    (shm / f"emoframe{dead.pid}_1a2b_region").write_bytes(b"x")
    (shm / f"emoframe{live}_1a2b_region").write_bytes(b"x")
    removed = {p.name for p in sweep(tmp_path, shm)}
    assert removed == {f"emoframe-triton-{dead.pid}-abc", f"emoframe{dead.pid}_1a2b_region"}
    assert (tmp_path / f"emoframe-triton-{live}-abc").exists() and (shm / f"emoframe{live}_1a2b_region").exists()


def test_ray_token_file_is_made_owner_only(tmp_path):
    from emoframe.flows.run.ray_runtime import tighten_token_file

    folder = tmp_path / ".ray"
    folder.mkdir(mode=0o755)
    (folder / "auth_token").write_text("t" * 64)
    (folder / "auth_token").chmod(0o644)
    assert tighten_token_file(tmp_path) == folder / "auth_token"
    assert (folder / "auth_token").stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    assert tighten_token_file(tmp_path / "nobody") is None


def test_two_concurrent_runs_on_one_output_leave_each_frame_once_and_nothing_failed(videos, tmp_path):
    """Two `emoframe label` runs started together on the same sources and output (two cron lines, a retry
    while the first still runs): both finish, and each video's rows are there once, not twice."""
    out = tmp_path / "out"
    runs = [_label(videos, out, tmp_path / f"run{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in runs]
    assert codes == [0, 0], [(tmp_path / f"run{i}.log").read_text()[-3000:] for i in range(2)]
    _rerun_completes(videos, out, tmp_path / "rerun.log", "two runs at once on one output, then a third")
    assert "6 already done" in (tmp_path / "rerun.log").read_text()


def test_only_the_processes_of_the_runs_own_ray_are_killed(tmp_path):
    """What a run kills after its own Ray stopped: the processes that inherited its mark (a starting worker
    in a group of its own), an agent that renamed itself ray::DashboardAgent (over what /proc shows as its
    environment) and holds a log in the session's folder; not another run's, and not a user's `tail -f` of
    the session's log, which holds the same file open."""
    from emoframe.flows.run.ray_session import OWNER_VAR, kill_marked

    session = tmp_path / "session_2026-11-27_14-15-43_821355_9404"
    other = tmp_path / "session_2026-11-27_14-15-43_821355_94041"  # ours is a prefix of its name
    for folder in (session, other):
        (folder / "logs").mkdir(parents=True)
        (folder / "logs" / "dashboard_agent.log").write_text("")

    def start(mark: str | None, name: str = sys.executable, log: Path | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != OWNER_VAR} | ({OWNER_VAR: mark} if mark else {})
        code = "import os, time; f = os.environ.get('LOG') and open(os.environ['LOG']); time.sleep(120)"
        return subprocess.Popen([name, "-c", code], executable=sys.executable, start_new_session=True,
                                env=env | ({"LOG": str(log)} if log else {}))

    ours = [start("1-ours"), start(None, "ray::DashboardAgent", session / "logs" / "dashboard_agent.log")]
    theirs = [start("2-theirs"), start(None, "ray::DashboardAgent", other / "logs" / "dashboard_agent.log"),
              subprocess.Popen(["tail", "-f", str(session / "logs" / "dashboard_agent.log")],
                               stdout=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 30
        while not all(psutil.Process(p.pid).open_files() for p in (ours[1], theirs[1], theirs[2])):
            assert time.monotonic() < deadline, "the agents never opened their logs"
            time.sleep(0.1)
        assert sorted(kill_marked("1-ours", str(session))) == sorted(p.pid for p in ours)
        assert not any(psutil.pid_exists(p.pid) for p in ours)  # killed, and waited for
        assert all(p.poll() is None for p in theirs)
    finally:
        for p in (*ours, *theirs):
            p.kill()
            p.wait()


GUARDED_RUN = """
import os, subprocess, sys, time
from emoframe.flows.run.ray_session import SessionGuard, kill_marked, marking
with marking(sys.argv[1]):  # what ray.init() starts; the guard never carries the mark, even started here
    guard = SessionGuard(sys.argv[1], "/nonexistent/session_x")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(guard.proc.pid, worker.pid, flush=True)
if sys.argv[2] == "done":
    killed = kill_marked(sys.argv[1], "/nonexistent/session_x")  # the run's own: the guard is not among them
    print(guard.proc.pid not in killed, flush=True)
    with marking(sys.argv[1]):  # marked, but still running when the run says done: the guard leaves it alone
        late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    guard.done()
    print(late.poll() is None, late.pid, flush=True)
    late.kill()
else:
    time.sleep(120)  # killed here
"""


@pytest.mark.parametrize("ends", ["killed", "done"])
def test_a_runs_ray_leftovers_are_killed_by_its_guard_when_the_run_is_killed(ends):
    """A run SIGKILLed while its Ray is up (`prefect worker` stopped right after a run, which kills the
    run's process inside ray.shutdown()) leaves nothing: its guard kills the marked processes. A run that
    ends on its own tells the guard, which then exits killing nothing."""
    mark = f"{os.getpid()}-guard-test-{ends}"
    run = subprocess.Popen([sys.executable, "-c", GUARDED_RUN, mark, ends], stdout=subprocess.PIPE, text=True)
    guard_pid, worker_pid = map(int, run.stdout.readline().split())
    guard = psutil.Process(guard_pid)
    try:
        if ends == "killed":
            run.kill()
            run.wait()
            guard.wait(20)  # psutil.TimeoutExpired if the guard stays
            assert not psutil.pid_exists(worker_pid)  # the guard killed the run's marked worker
        else:
            assert run.wait(30) == 0
            assert run.stdout.readline().strip() == "True"  # the run's own kill spared its guard
            alive, late_pid = run.stdout.readline().split()
            assert alive == "True", "the guard killed after the run said done"
            assert not guard.is_running() and not psutil.pid_exists(worker_pid)
    finally:
        run.kill()
        for pid in (guard_pid, worker_pid):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
