"""Ray as a run uses it: the runtime environment its workers get, the task runner that starts and stops it,
and the token file Ray writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
from prefect_ray import RayTaskRunner

from emoframe.flows.run import stop_signals
from emoframe.flows.run.ray_session import SessionGuard, kill_marked, marking, new_mark
from emoframe.workers.processes.isolation import WORKER_SETUP_HOOK

logger = logging.getLogger(__name__)


# Where the object store is and how to reach it: what a worker on another node lacks when only the driver's
# shell has it ("Could not resolve host: archive.s3.us-east-1.amazonaws.com"). Not secrets: Ray keeps a job's
# runtime environment in its GCS and shows it in the dashboard, so credentials are never sent this way;
# each node takes them from its own chain (instance role, its `ray start` environment, ~/.aws).
STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_EC2_METADATA_DISABLED", "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST")


def _submitted_job_runtime_env() -> dict:
    """The runtime env of the `ray job submit` job this driver runs in ({} outside one): Ray refuses to merge
    a conflicting one. The job's config reaches its driver in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    return job.get("runtime_env") or {}


def worker_env(api_url: str) -> dict[str, str]:
    """Environment variables every Ray worker of the run needs: the run's Prefect API (a worker has no
    Prefect settings of its own and would start a temporary API per process) and the storage settings above,
    less what a `ray job submit` job's runtime env already sets: Ray refuses to merge a conflict. The job's
    config reaches its driver in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    env = {"PREFECT_API_URL": api_url}
    # Prefect's logging in the workers as in the driver (--log-level sets PREFECT_LOGGING_LEVEL there).
    for name in ("PREFECT_LOGGING_TO_API_ENABLED", "PREFECT_LOGGING_LEVEL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update({k: os.environ[k] for k in STORAGE_SETTINGS if os.environ.get(k)})
    inherited = _submitted_job_runtime_env().get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in inherited}


def worker_runtime_env(env_vars: dict[str, str]) -> dict:
    """The runtime env the run asks Ray for: ``env_vars`` (``worker_env``) and a setup hook that starts each
    worker's forkserver as the worker starts (workers/processes/isolation.py), unless a `ray job submit`
    job brought a hook of its own (Ray refuses two)."""
    runtime: dict = {"env_vars": env_vars} if env_vars else {}
    if not _submitted_job_runtime_env().get("worker_process_setup_hook"):
        runtime["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return runtime


class RunRayTaskRunner(RayTaskRunner):
    """prefect-ray's task runner, which also stops what its own Ray leaves running.

    When the runner's ray.init() started the Ray (``address="local"``, or no address and no cluster to join),
    every process of that Ray still running after the shutdown is killed, and a guard process does it if
    this process dies first (flows/run/ray_session.py says why both, and how the processes are known). A
    cluster's processes are never touched, even a cluster this same process started
    (``ray.cluster_utils.Cluster`` in a test)."""

    _mark: str | None = None
    _session_dir: str = ""
    _guard: SessionGuard | None = None

    @property
    def name(self) -> str:
        return "ray"  # prefect-ray's runner still: its log lines keep their logger, prefect.task_runner.ray

    def __enter__(self) -> RunRayTaskRunner:
        mark = new_mark()
        try:
            with marking(mark):
                super().__enter__()  # ray.init()
        except BaseException:  # a ray.init() that failed half-way: what it started is not left running
            kill_marked(mark, None)
            raise
        stop_signals.watch()  # ray.init() put its own SIGTERM handler in place
        session_dir = _own_session_dir() if self._owns_ray else None
        if session_dir:
            self._mark, self._session_dir = mark, session_dir
            try:
                self._guard = SessionGuard(mark, session_dir)
            except OSError as exc:  # no guard: the run still kills what it leaves on its way out
                logger.warning("no guard for this run's Ray (%s): a run killed hard may leave Ray processes", exc)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            if self._mark:
                stopped = kill_marked(self._mark, self._session_dir)
                if stopped:
                    logger.debug("killed %d process(es) left of this run's Ray: %s", len(stopped), stopped)
            if self._guard:
                self._guard.done()


def _own_session_dir() -> str | None:
    """The session folder of the Ray this process is connected to when this process's ray.init() started it
    (a head node of its own), else None: a cluster joined, one started elsewhere or by
    ``ray.cluster_utils.Cluster`` in this same process, whose services are this process's children all the
    same. Ray says so only through its private node object; if that ever changes, nothing is killed."""
    try:
        node = ray._private.worker._global_node
        return str(node.get_session_dir_path()) if node is not None and node.is_head() else None
    except Exception:  # noqa: BLE001 -- a Ray without this private API: never kill
        return None


def tighten_token_file(home: Path | None = None) -> Path | None:
    """Ray (2.60) writes its cluster token to ~/.ray/auth_token readable by every local user (0644 in a 0755
    folder); anyone holding it can submit jobs to the cluster. Made owner-only. Returns the file, if any."""
    folder = (home or Path.home()) / ".ray"
    token = folder / "auth_token"
    if not token.is_file() or token.stat().st_uid != os.getuid():
        return None
    token.chmod(0o600)
    folder.chmod(0o700)
    return token
