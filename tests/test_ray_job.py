"""`ray job submit -- emoframe label ...` on a real Ray head started on this machine with `ray start --head`,
with token authentication on (Ray 2.60's default for new clusters); output read back with DuckDB."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.test_deploy import (VENV_BIN, ServiceProcesses, assert_labelled, free_port, ray_tmp,  # noqa: F401
                               two_videos, wait_for)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
def test_ray_job_submit_labels_on_the_cluster(tmp_path, ray_tmp):
    token = secrets.token_hex(32)
    procs = ServiceProcesses({
        # The cluster's token, given to every process through the environment: nothing is read from or written
        # to ~/.ray/auth_token. Ray processes, and so the job's entrypoint, inherit it from `ray start`.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    gcs_port, dashboard_port = free_port(), free_port()
    videos = two_videos(tmp_path / "in")
    out = tmp_path / "out"
    ray = str(VENV_BIN / "ray")
    try:
        # Every port that would otherwise default to a fixed number is free-picked, so that this head does not
        # collide with another Ray on the machine.
        head = procs.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
                          "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                          f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                          "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={ray_tmp}",
                          "--disable-usage-stats"], timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        # Ray 2.60 replaces a loopback --node-ip-address with the machine's own address; the file holds the
        # GCS address that was actually used.
        gcs = wait_for("GCS address", lambda: (ray_tmp / "ray_current_cluster").read_text().strip(), 10)
        dashboard = f"http://127.0.0.1:{dashboard_port}"

        refused = procs.run([ray, "job", "list", "--address", dashboard], 60, RAY_AUTH_TOKEN="not-the-token")
        assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr

        # The entrypoint runs on the head with Ray's environment, whose PATH need not hold the venv: give the
        # venv's emoframe by absolute path (and absolute paths for files, the job's working directory is not
        # this one). The Prefect settings keep the job's temporary Prefect API out of ~/.prefect.
        runtime_env = {"env_vars": {"PREFECT_HOME": str(tmp_path / "prefect_home"),
                                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}}
        job = procs.run([ray, "job", "submit", "--address", dashboard, "--runtime-env-json", json.dumps(runtime_env),
                         "--", str(VENV_BIN / "emoframe"), "label", str(tmp_path / "in"), "--out", str(out),
                         "--ray-address", gcs], timeout=300)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log
        assert "succeeded" in log and f"Connecting to an existing Ray instance at {gcs}" in log, log
        assert_labelled(out, videos)
    finally:
        procs.end_all()  # stops the head and everything it started (its workers, the job, tritonserver)
    assert not procs.wait_gone(5), "processes of this test left behind"
