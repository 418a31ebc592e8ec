"""Ray as a run uses it: the runtime environment its workers get, and the token file Ray writes."""

from __future__ import annotations

import json
import os
from pathlib import Path


# Where the object store is and how to reach it: what a worker on another node lacks when only the driver's
# shell has it ("Could not resolve host: archive.s3.us-east-1.amazonaws.com"). Not secrets: Ray keeps a job's
# runtime environment in its GCS and shows it in the dashboard, so credentials are never sent this way;
# each node takes them from its own chain (instance role, its `ray start` environment, ~/.aws).
STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_EC2_METADATA_DISABLED", "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST")


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
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    inherited = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in inherited}


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
