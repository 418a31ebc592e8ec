"""`emoframe serve` (flows/run/deploy.py) against a real Prefect server on loopback: the deployment is registered
with its cron schedule, the scheduler (not a hand trigger) starts a run within a minute or two, that run labels
real MP4 files on Ray, and stopping serve pauses the schedule; the same for a work pool served by `prefect worker
start`. Also the set-up errors, without a server.

The process helpers here (ServiceProcesses, free_port, wait_for) are shared with tests/test_ray_job.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import decord
from emoframe.flows.run.deploy import ServeSetupError, serve
from emoframe.workers.processes.ports import free_port
from emoframe.flows.analysis.query import connect
from tests.media import write_video

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TAG_VAR = "EMOFRAME_TEST_PROCESSES"
# What `emoframe serve SOURCE --out OUT --cron CRON --name NAME` runs.
def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 1.0,
              alive: subprocess.Popen | None = None, log: Path | None = None) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s, or at once when the process
    ``alive`` exits (with the tail of ``log``, which says why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"{what}: the process exited with {alive.returncode}\n{tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{tail(log)}")


def tail(log: Path | None, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log and log.exists() else ""


class ServiceProcesses:
    """The processes a test starts, each in a new session and all carrying a unique tag in their environment.
    Every descendant inherits the tag (uvicorn, Ray's daemons and workers, tritonserver, the flow run's
    subprocess), so everything the test caused can be found by pid and ended, without touching anyone else's
    processes (`ray stop` would kill every Ray process on the machine)."""

    def __init__(self, env: dict[str, str]):
        self.tag = secrets.token_hex(8)
        self.env = {**os.environ, **env, TAG_VAR: self.tag}
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                 cwd=REPO_ROOT, start_new_session=True)
        self.started.append(p)
        return p

    def run(self, args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env={**self.env, **env}, cwd=REPO_ROOT,
                              timeout=timeout)

    def alive(self) -> dict[int, str]:
        """pid -> command line of every live process carrying this test's tag."""
        marker = f"{TAG_VAR}={self.tag}".encode()
        found = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if marker in (d / "environ").read_bytes().split(b"\0"):
                    state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":  # a zombie has ended; only its parent's wait is missing
                        found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    def stop(self, p: subprocess.Popen, grace: float) -> None:
        """SIGTERM to the process group (a clean shutdown), SIGKILL after ``grace`` s."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            if p.poll() is not None:
                return
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                pass

    def wait_gone(self, timeout: float) -> dict[int, str]:
        """Wait until no tagged process is left; returns those still there after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def end_all(self, grace: float = 10) -> None:
        """Stop what was started (last first), then every other tagged process, daemons such as a Ray head
        included: SIGTERM, SIGKILL after ``grace`` s. `ray stop --force`, limited to this test's processes."""
        for p in reversed(self.started):
            self.stop(p, grace)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            for pid in (pids := self.alive()):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids:
                self.wait_gone(wait)


@contextlib.contextmanager
def standalone_triton(procs: ServiceProcesses, folder: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`emoframe triton` as a user runs it (its own process, Ctrl-C or SIGTERM stops it): yields the process
    and the --triton-url it prints once the model is ready; stopped with SIGTERM at the end."""
    import re

    out = folder / "emoframe-triton.out"
    p = procs.start([str(VENV_BIN / "emoframe"), "triton", "--grpc-port", str(free_port()), "--http-port",
                     str(free_port()), "--log", str(folder / "tritonserver.log"), *extra], out)
    try:
        url = wait_for("emoframe triton ready", lambda: re.search(r"--triton-url (\S+)", out.read_text()), 180,
                       0.5, alive=p, log=out)
        yield p, url[1]
    finally:
        procs.stop(p, 20)


def two_videos(folder: Path) -> list[Path]:
    return [write_video(folder / "talking.mp4", 30, 15, audio_seconds=2.0), write_video(folder / "mute.mp4", 20, 15)]


def prefect_test_env(tmp_path: Path, ray_tmp: Path, api: str) -> dict[str, str]:
    """A Prefect server's and its clients' settings for a test: nothing lands in ~/.prefect. Each flow run starts
    a local Ray; its files go to ``ray_tmp``, and Ray 2.60 is kept from writing an auth token into ~/.ray (a new
    local cluster enables token auth by default)."""
    return {"PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false", "RAY_TMPDIR": str(ray_tmp),
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def start_prefect_server(procs: ServiceProcesses, port: int, log: Path):
    """`prefect server start` on loopback, waited for; returns (process, HTTP client, get) where get(path) is
    the JSON of a 200 answer, else None."""
    server = procs.start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         log)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10)

    def get(path: str) -> dict | None:
        try:
            r = http.get(path)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    wait_for("Prefect server health", lambda: get("/health"), 120, alive=server, log=log)
    return server, http, get


def cron_in_two_minutes() -> str:
    """Daily at a minute about two minutes from now (UTC): the scheduler fires it once during a test, as it would
    a user's nightly run, and not again before the test ends."""
    fire = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=2)
    return f"{fire.minute} {fire.hour} * * *"


def assert_labelled(out: Path, videos: list[Path]) -> None:
    """One Parquet row per decoded frame of each video, and a `labelled` videos row."""
    con = connect(str(out))
    rows = dict(con.sql("SELECT source_uri, count(*) FROM frames GROUP BY 1").fetchall())
    assert rows == {str(v): len(decord.VideoReader(str(v))) for v in videos}
    status = dict(con.sql("SELECT source_uri, status FROM videos").fetchall())
    assert status == {str(v): "labelled" for v in videos}


def test_serve_needs_a_prefect_server(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    clips, labels = str(tmp_path), str(tmp_path / "labels")
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ServeSetupError, match=r"prefect server start.*PREFECT_API_URL"):
            serve([clips], labels, cron="0 2 * * *")
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        with pytest.raises(ServeSetupError, match="does not answer"):
            serve([clips], labels, cron="0 2 * * *")


def test_serve_checks_what_it_would_store_before_registering(tmp_path):
    """A missing source or a URI with a secret is refused before any Prefect server is asked (none is set
    here: reaching that check would say so instead)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ServeSetupError, match="not found"):
            serve([str(tmp_path / "typo")], str(tmp_path / "labels"), cron="0 2 * * *")
        with pytest.raises(ServeSetupError, match="credentials") as err:
            serve(["s3://AKIAEXAMPLE:zq9/Xy7w@bucket/in"], str(tmp_path / "labels"), cron="0 2 * * *")
    assert "AKIAEXAMPLE" not in str(err.value) and "zq9" not in str(err.value) and "Xy7w" not in str(err.value)


@pytest.mark.parametrize("cron, tz, why", [("0 2 * *", None, "Invalid cron string"),
                                          ("0 2 * * *", "Mars/Olympus", "Invalid timezone")])
def test_serve_rejects_a_bad_schedule_before_contacting_prefect(cron, tz, why):
    with pytest.raises(ServeSetupError, match=why):
        serve(["clips/"], "labels/", cron=cron, timezone=tz)


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_serve_registers_a_cron_deployment_that_labels_on_ray(tmp_path, ray_tmp):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    procs = ServiceProcesses(prefect_test_env(tmp_path, ray_tmp, api))
    videos = two_videos(tmp_path / "in")
    out = tmp_path / "out"
    name = "nightly-test"
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    try:
        server, http, get = start_prefect_server(procs, port, server_log)
        cron = cron_in_two_minutes()
        # The real command, with the flags that shape each scheduled run.
        served = procs.start([str(VENV_BIN / "emoframe"), "serve", str(tmp_path / "in"), "--out", str(out), "--cron",
                              cron, "--name", name, "--max-in-flight", "1", "--segment-minutes", "0"], serve_log)
        deployment = wait_for("deployment registered", lambda: get(f"/deployments/name/label_archive/{name}"),
                              120, alive=served, log=serve_log)
        [schedule] = deployment["schedules"]
        assert schedule["schedule"]["cron"] == cron and schedule["active"] and not deployment["paused"]
        assert deployment["parameters"]["sources"] == [str(tmp_path / "in")]
        assert deployment["parameters"]["out"] == str(out)
        assert (deployment["parameters"]["max_in_flight"], deployment["parameters"]["segment_minutes"]) == (1, 0)
        assert deployment["parameters"]["triton"] == "embedded"

        def scheduled_run() -> str | None:
            runs = http.post("/flow_runs/filter", json={
                "deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}).json()
            started = [r for r in runs if r["auto_scheduled"] and (r.get("state") or {}).get("type")
                       not in (None, "SCHEDULED")]
            return started[0]["id"] if started else None

        # The scheduler creates runs ahead and serve picks each up when due: about two minutes, plus start-up.
        run_id = wait_for("a scheduled run started", scheduled_run, 300, interval=2, alive=served, log=serve_log)

        def finished() -> str | None:
            state = (get(f"/flow_runs/{run_id}") or {}).get("state") or {}
            return state.get("type") if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") \
                else None

        assert wait_for("flow run finished", finished, 240, interval=2, alive=served, log=serve_log) \
            == "COMPLETED", tail(serve_log)
        assert "prefect.task_runner.ray - Creating a local Ray instance" in serve_log.read_text()
        assert_labelled(out, videos)
        # The Ray workers recorded their task runs in this server (not in temporary APIs of their own).
        tasks = http.post("/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run_id]}}}).json()
        assert sorted((t["name"], t["state_type"]) for t in tasks) == \
            sorted([("check storage from a worker", "COMPLETED")] + [(f"label {v}", "COMPLETED") for v in videos])
        # The run's summary on its page in the Prefect UI: a table artifact with the counts.
        artifacts = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        [table] = [a for a in artifacts if a["key"] == "emoframe-run-summary"]
        assert table["type"] == "table"
        counts = {r["what"]: r["count"] for r in json.loads(table["data"])}
        assert counts["labelled"] == len(videos) and counts["failed"] == 0

        # Stopped right after a run (the case where Prefect's own pause on shutdown is lost), the deployment is
        # paused; serving it again resumes it.
        procs.stop(served, grace=30)
        assert get(f"/deployments/{deployment['id']}")["paused"], tail(serve_log)
        assert "paused label_archive/nightly-test" in serve_log.read_text()
        served = procs.start(served.args, serve_log)
        wait_for("deployment resumed", lambda: not get(f"/deployments/{deployment['id']}")["paused"], 120,
                 alive=served, log=serve_log)

        procs.stop(served, grace=30)
        procs.stop(server, grace=30)
        left = procs.wait_gone(20)
        assert not left, f"processes left behind once serve and the server stopped: {left}"
    finally:
        procs.end_all()


# What a user runs once to register the work-pool deployment (docs/operations.md, "(b) Production").
DEPLOY = """
import json, sys
from prefect import flow
flow.from_source(source=sys.argv[1], entrypoint="flows/run/deploy.py:label_archive_on_ray").deploy(
    name=sys.argv[2], work_pool_name=sys.argv[3], cron=sys.argv[4], parameters=json.loads(sys.argv[5]))
"""


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_work_pool_worker_runs_the_scheduled_deployment(tmp_path, ray_tmp):
    """Production path (b): a Prefect server, a process work pool, the deployment registered from source with a
    cron, and `prefect worker start`: the scheduler (not a hand trigger) creates the run, the worker picks it
    up and labels the videos on Ray."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    procs = ServiceProcesses(prefect_test_env(tmp_path, ray_tmp, api))
    videos = two_videos(tmp_path / "in")
    out = tmp_path / "out"
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    prefect = str(VENV_BIN / "prefect")
    try:
        server, http, get = start_prefect_server(procs, port, server_log)
        pool = procs.run([prefect, "work-pool", "create", "emoframe-test", "--type", "process"], 120)
        assert pool.returncode == 0, pool.stdout + pool.stderr
        cron = cron_in_two_minutes()
        params = {"sources": [str(tmp_path / "in")], "out": str(out)}
        deployed = procs.run([sys.executable, "-c", DEPLOY, str(REPO_ROOT), "nightly-pool", "emoframe-test", cron,
                              json.dumps(params)], 180)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        deployment = get("/deployments/name/label_archive/nightly-pool")
        assert (deployment["work_pool_name"] == "emoframe-test"
                and deployment["schedules"][0]["schedule"]["cron"] == cron)
        worker = procs.start([prefect, "worker", "start", "--pool", "emoframe-test"], worker_log)

        def scheduled_run_finished() -> str | None:
            runs = http.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}).json()
            done = [r for r in runs if r["auto_scheduled"] and (r.get("state") or {}).get("type")
                    in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            return done[0]["state"]["type"] if done else None

        assert wait_for("the scheduled run, picked up by the worker", scheduled_run_finished, 420, interval=3,
                        alive=worker, log=worker_log) == "COMPLETED", tail(worker_log)
        assert_labelled(out, videos)
        procs.stop(worker, grace=30)
        procs.stop(server, grace=30)
        left = procs.wait_gone(20)
        assert not left, f"processes left behind once the worker and the server stopped: {left}"
    finally:
        procs.end_all()
