"""`ray job submit -- emoframe label ...` on a real Ray head started on this machine with `ray start --head`,
with token authentication on (Ray 2.60's default for new clusters); output read back with DuckDB."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.test_deploy import (VENV_BIN, ServiceProcesses, assert_labelled, free_port,
                               two_videos, wait_for)

pytestmark = pytest.mark.integration


RAY = str(VENV_BIN / "ray")


def start_head(procs: ServiceProcesses, ray_tmp: Path, dashboard: bool = True) -> tuple[str, str]:
    """`ray start --head` with its files in ``ray_tmp``; returns (GCS address, dashboard URL). Every port that
    would otherwise default to a fixed number is free-picked, so that this head does not collide with another
    Ray on the machine."""
    dashboard_port = free_port()
    head = procs.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                      "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                      f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                      "--num-cpus=2", f"--include-dashboard={str(dashboard).lower()}", f"--temp-dir={ray_tmp}",
                      "--disable-usage-stats"], timeout=120)
    assert head.returncode == 0, head.stdout + head.stderr
    # Ray 2.60 replaces a loopback --node-ip-address with the machine's own address; the file holds the GCS
    # address that was actually used.
    gcs = wait_for("GCS address", lambda: (ray_tmp / "ray_current_cluster").read_text().strip(), 10)
    return gcs, f"http://127.0.0.1:{dashboard_port}"


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
    videos = two_videos(tmp_path / "in")
    out = tmp_path / "out"
    try:
        gcs, dashboard = start_head(procs, ray_tmp)

        refused = procs.run([RAY, "job", "list", "--address", dashboard], 60, RAY_AUTH_TOKEN="not-the-token")
        assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr

        # The entrypoint runs on the head with Ray's environment, whose PATH need not hold the venv: give the
        # venv's emoframe by absolute path (and absolute paths for files, the job's working directory is not
        # this one). The Prefect settings keep the job's temporary Prefect API out of ~/.prefect.
        runtime_env = {"env_vars": {"PREFECT_HOME": str(tmp_path / "prefect_home"),
                                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}}
        job = procs.run([RAY, "job", "submit", "--address", dashboard, "--runtime-env-json", json.dumps(runtime_env),
                         "--", str(VENV_BIN / "emoframe"), "label", str(tmp_path / "in"), "--out", str(out),
                         "--ray-address", gcs], timeout=300)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log
        assert "succeeded" in log and f"Connecting to an existing Ray instance at {gcs}" in log, log
        assert_labelled(out, videos)
    finally:
        procs.end_all()  # stops the head and everything it started (its workers, the job, tritonserver)
    assert not procs.wait_gone(5), "processes of this test left behind"


@pytest.mark.timeout(600)
def test_cluster_workers_reach_the_bucket_with_the_runs_storage_settings(tmp_path, ray_tmp, s3_server):
    """A Ray head started without the object store's endpoint (only credentials, as an instance role would
    give): `emoframe label s3://... --ray-address` from a shell that has the endpoint labels on the cluster,
    because the endpoint travels in the run's runtime environment."""
    from tests.media import write_video

    fs = s3_server.filesystem()
    clip = write_video(tmp_path / "c.mp4", 30, 15)
    with fs.open_output_stream(f"{s3_server.bucket}/cluster-in/c.mp4") as f:
        f.write(clip.read_bytes())
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    procs = ServiceProcesses({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    procs.env.pop("AWS_ENDPOINT_URL")  # the nodes know who they are, not where the store is
    try:
        gcs, _ = start_head(procs, ray_tmp, dashboard=False)
        label = [str(VENV_BIN / "emoframe"), "label", s3_server.uri("cluster-in"), "--faces", "centred",
                 "--ray-address", gcs]
        done = procs.run([*label, "--out", s3_server.uri("cluster-out")], 420, AWS_ENDPOINT_URL=endpoint)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 labelled, 0 failed" in done.stdout, done.stdout
        frames = [fi.path for fi in fs.get_file_info(pafs.FileSelector(f"{s3_server.bucket}/cluster-out/frames",
                                                                        recursive=True)) if fi.is_file]
        assert len(frames) == 1
    finally:
        procs.end_all()
    assert not procs.wait_gone(5), "processes of this test left behind"


@pytest.mark.timeout(720)
def test_token_auth_sequence_after_a_local_run(tmp_path, ray_tmp):
    """The sequence docs/operations.md gives: a local `emoframe label` leaves a token in ~/.ray/auth_token (made
    owner-only); a later `ray start --head` picks it up and enables token auth; with RAY_AUTH_MODE=token exported,
    `emoframe label --ray-address` and `ray job submit` then work against that head. HOME is the test's own."""
    from emoframe.workers.media.faces.weights import cache_dir

    home = tmp_path / "home"
    home.mkdir()
    procs = ServiceProcesses({"HOME": str(home), "EMOFRAME_WEIGHTS": str(cache_dir()),
                              "PREFECT_HOME": str(tmp_path / "prefect_home"), "RAY_USAGE_STATS_ENABLED": "0",
                              "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    for unset in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        procs.env.pop(unset, None)
    videos = two_videos(tmp_path / "in")
    emoframe = str(VENV_BIN / "emoframe")
    (ray_tmp / "l").mkdir()
    try:
        local = procs.run([emoframe, "label", str(tmp_path / "in"), "--out", str(tmp_path / "local")], 400,
                          RAY_TMPDIR=str(ray_tmp / "l"))
        assert local.returncode == 0, local.stdout + local.stderr
        token = home / ".ray" / "auth_token"
        assert token.is_file() and token.stat().st_mode & 0o777 == 0o600

        gcs, dashboard = start_head(procs, ray_tmp)  # picks up the token the local run left
        refused = procs.run([RAY, "job", "list", "--address", dashboard], 60, RAY_AUTH_MODE="token",
                            RAY_AUTH_TOKEN="not-the-token")
        assert refused.returncode != 0, "the head should have picked up the token and enabled token auth"

        on_cluster = procs.run([emoframe, "label", str(tmp_path / "in"), "--out", str(tmp_path / "cluster"),
                                "--ray-address", gcs], 400, RAY_AUTH_MODE="token")
        assert on_cluster.returncode == 0, on_cluster.stdout + on_cluster.stderr
        assert_labelled(tmp_path / "cluster", videos)
        job = procs.run([RAY, "job", "submit", "--address", dashboard, "--", emoframe, "label",
                         str(tmp_path / "in"), "--out", str(tmp_path / "job"), "--ray-address", gcs], 400,
                        RAY_AUTH_MODE="token")
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout + job.stderr
        assert_labelled(tmp_path / "job", videos)
    finally:
        procs.end_all()
    assert not procs.wait_gone(5), "processes of this test left behind"
