"""Ray as a run uses it: the runtime environment its workers get, the task runner that starts and stops it,
and the token file Ray writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import psutil
import ray
from prefect_ray import RayTaskRunner

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

    A Ray worker that is starting when its Ray stops (a signal mid-run) is in a process group of its own. The
    signal that stopped the run misses it. Its raylet and GCS are gone, so it waits out a GCS connect timeout:
    it was seen alive 15 s after the run had exited. So when the runner's ray.init() started the Ray
    (``address="local"``, or no address and no cluster to join), every process still running with that Ray's
    session name is killed after the shutdown. A cluster's processes are never touched, even a cluster this
    same process started (``ray.cluster_utils.Cluster`` in a test)."""

    _session: str | None = None

    @property
    def name(self) -> str:
        return "ray"  # prefect-ray's runner still: its log lines keep their logger, prefect.task_runner.ray

    def __enter__(self) -> RunRayTaskRunner:
        super().__enter__()
        if self._owns_ray and _started_by_ray_init():
            self._session = ray.get_runtime_context().get_session_name()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            if self._session:
                stopped = kill_session_leftovers(self._session)
                if stopped:
                    logger.debug("killed %d process(es) left of Ray session %s: %s", len(stopped), self._session,
                                 stopped)


def _started_by_ray_init() -> bool:
    """Whether this process's ray.init() started the Ray it is connected to (a head node of its own), rather
    than joined a cluster: one started elsewhere, or by ``ray.cluster_utils.Cluster`` in this same process,
    whose services are this process's children all the same. Ray says so only through its private node
    object; if that ever changes, nothing is killed."""
    try:
        node = ray._private.worker._global_node
        return bool(node is not None and node.is_head())
    except Exception:  # noqa: BLE001 -- a Ray without this private API: never kill
        return False


def kill_session_leftovers(session: str) -> list[int]:
    """SIGKILLs this user's processes whose command line names the Ray session ``session`` (a Ray worker
    has ``--session-name=<session>``, the services the session's folder); returns their pids. Session names
    carry a timestamp and the starting pid: no other Ray's process matches."""
    me, uid, found = os.getpid(), os.getuid(), []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if proc.info["pid"] == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if any(session in arg for arg in proc.info["cmdline"] or ()):
                proc.kill()
                found.append(proc)
        except psutil.Error:  # exited meanwhile
            continue
    psutil.wait_procs(found, timeout=5)
    return [p.pid for p in found]


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
