"""The preflight (flows/run/preflight.py): a mistake in what the user named is one line and exit 2 before any
service starts, and a URI carrying a secret is refused without echoing it or leaving it anywhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emoframe.flows.run.preflight import PreflightError, check_output, check_sources, check_triton, check_uris
from tests.media import write_video
from emoframe.workers.output.storage import CredentialsInURIError, check_no_credentials

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY/s3cr3t"  # AWS secret keys hold '/' and '+'
ACCESS = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("uri", [
    f"s3://{ACCESS}:{SECRET}@bucket/in",  # the first '/' falls inside the secret
    f"s3://{ACCESS}:{SECRET}@bucket",
    f"gs://user:{SECRET}@bucket/in",
    f"s3://{SECRET.split('/')[0]}@bucket/in",  # a token as user name alone
    f"s3://bucket/in/clip.mp4?secret_key={SECRET}",
    f"s3://bucket/in?X-Amz-Credential={ACCESS}%2F20261126&X-Amz-Signature={SECRET}",
    f"gs://bucket/in?access_key={ACCESS}&x=1",
    f"S3://{ACCESS}:{SECRET}@bucket/in",
])
def test_credentials_in_a_uri_are_refused_whatever_the_secret_holds(uri):
    with pytest.raises(CredentialsInURIError) as err:
        check_no_credentials(uri)
    message = str(err.value)
    for part in (SECRET, ACCESS, *SECRET.split("/"), *SECRET.split("+")):
        assert part not in message
    with pytest.raises(PreflightError) as err:
        check_uris([uri], "out")
    assert SECRET.split("/")[0] not in str(err.value) and ACCESS not in str(err.value)


@pytest.mark.parametrize("uri", ["s3://bucket/in/what?.mp4", "s3://bucket/mail/a@b.c/clip.mp4",
                                 "s3://bucket/in/x?token.mp4", "gs://bucket/a:b/c.mp4", "clips/a:b@c.mp4",
                                 "file:///tmp/a@b:c.mp4"])
def test_object_keys_with_question_marks_at_signs_and_colons_are_not_credentials(uri):
    check_no_credentials(uri)  # keys are literal: '?', '@' and ':' are legal in them


def test_sources_that_do_not_exist_are_named(tmp_path):
    clip = write_video(tmp_path / "a.mp4", 3)
    check_sources([str(clip), str(tmp_path), str(tmp_path / "*.mp4")])
    with pytest.raises(PreflightError, match=r"not found: .*nope\.mp4, .*\*\.mkv"):
        check_sources([str(clip), str(tmp_path / "nope.mp4"), str(tmp_path / "*.mkv")])
    with pytest.raises(PreflightError, match="no videos named"):
        check_sources([])


def test_output_must_be_a_writable_folder_and_the_probe_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "out"
    check_output(str(out))
    assert out.is_dir() and list(out.iterdir()) == []
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(PreflightError, match="is a file"):
        check_output(str(tmp_path / "f.txt"))
    with pytest.raises(PreflightError, match="not writable"):
        check_output(str(tmp_path / "f.txt" / "below"))  # a file in the way: no folder can be made


@pytest.mark.parametrize("url, why", [("http://127.0.0.1:8001", "gRPC"), ("127.0.0.1", "host:port"),
                                      ("ftp://127.0.0.1:8001", "host:port")])
def test_triton_urls_that_cannot_be_grpc_are_refused_before_connecting(url, why):
    with pytest.raises(PreflightError, match=why):
        check_triton(url)


def _emoframe(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=cwd)


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path):
    clip = write_video(tmp_path / "a.mp4", 3)
    (tmp_path / "file").write_text("x")
    cases = {
        "no videos named.*--demo": ("label", "--out", str(tmp_path / "o")),  # an empty $VAR in a cron line
        "either --demo or the videos": ("label", str(clip), "--demo", "--out", str(tmp_path / "o")),
        "not found": ("label", str(tmp_path / "typo.mp4"), "--out", str(tmp_path / "o")),
        "is a file": ("label", str(clip), "--out", str(tmp_path / "file")),
        "Connection refused|failed to connect": ("label", str(clip), "--out", str(tmp_path / "o"),
                                                 "--triton-url", "127.0.0.1:9"),
        "emoframe talks gRPC": ("label", str(clip), "--out", str(tmp_path / "o"),
                                "--triton-url", "http://127.0.0.1:8001"),
        "no expression_fusion/config.pbtxt": ("label", str(clip), "--out", str(tmp_path / "o"),
                                              "--model-repo", str(tmp_path)),
    }

    for why, args in cases.items():
        res = _emoframe(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("emoframe label: ") and re.search(why, lines[0]), res.stderr
        assert "Traceback" not in res.stdout + res.stderr
        assert "Triton ready" not in res.stdout and not (tmp_path / "o" / "frames").exists()


def test_the_model_repository_comes_from_its_setting(tmp_path):
    """EMOFRAME_MODEL_REPO names the repository a command serves when it names none (an installed emoframe has
    no checkout beside it); one without the model is one line, before anything starts."""
    clip = write_video(tmp_path / "a.mp4", 3)
    env = {"EMOFRAME_MODEL_REPO": str(tmp_path / "models")}
    res = _emoframe("label", str(clip), "--out", str(tmp_path / "o"), env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and f"the model repository {tmp_path / 'models'} (EMOFRAME_MODEL_REPO" \
        in res.stderr and "set EMOFRAME_MODEL_REPO=DIR" in res.stderr, res.stderr
    helped = _emoframe("triton", "--help", env=env)
    assert f"default:{tmp_path / 'models'}" in "".join(helped.stdout.split()), helped.stdout  # wrapped at hyphens


@pytest.mark.integration  # waits out pyarrow's GCS retries (about 22 s)
def test_a_bucket_without_credentials_is_an_answer_not_a_hang(tmp_path):
    """gs:// on a machine without Google credentials: pyarrow's default retried in silence for 15 minutes;
    bounded (workers/output/storage.py), the user hears why within a minute."""
    env = {"HOME": str(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(tmp_path)}
    t = time.monotonic()
    res = _emoframe("label", "gs://emoframe-no-such-bucket/videos", "--out", str(tmp_path / "o"), env=env)
    assert time.monotonic() - t < 90
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "cannot read the sources' storage" in res.stderr and "OAuth2" in res.stderr, res.stderr


def test_a_refused_secret_leaves_no_trace(tmp_path):
    """`label` and `serve` with a credentials URI: refused, and the secret is nowhere on disk afterwards (the
    Prefect home, the output folder, the working directory), nor in what was printed."""
    home = tmp_path / "prefect-home"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": ""}
    uri = f"s3://{ACCESS}:{SECRET}@bucket/in"
    results = [_emoframe("label", uri, "--out", str(tmp_path / "out"), env=env, cwd=tmp_path),
               _emoframe("label", str(tmp_path), "--out", uri, env=env, cwd=tmp_path),
               _emoframe("serve", uri, "--out", str(tmp_path / "out"), "--cron", "0 2 * * *", env=env, cwd=tmp_path)]
    for res in results:
        assert res.returncode == 2 and "credentials" in res.stderr, res.stderr
        assert SECRET.split("/")[0] not in res.stdout + res.stderr and ACCESS not in res.stdout + res.stderr
    for f in (p for p in tmp_path.rglob("*") if p.is_file()):
        data = f.read_bytes()
        assert ACCESS.encode() not in data and SECRET.split("/")[0].encode() not in data, f


def test_the_worker_side_check_names_what_the_cluster_cannot_do(tmp_path):
    """The flow's first task runs this on a Ray worker; here its body, on this machine."""
    from emoframe.flows.run.label_archive import worker_access

    clip = write_video(tmp_path / "a.mp4", 3)
    assert worker_access.fn(str(tmp_path / "out"), str(clip)) is None
    (tmp_path / "file").write_text("x")
    assert "a Ray worker: --out" in worker_access.fn(str(tmp_path / "file" / "out"), str(clip))
    assert "cannot reach the storage" in worker_access.fn(str(tmp_path / "out"), str(tmp_path / "gone.mp4"))


def test_a_mistyped_flag_names_the_subcommand_and_the_flag_meant(tmp_path):
    res = _emoframe("label", str(tmp_path), "--stirde", "8")
    assert res.returncode == 2 and "emoframe label: error: unrecognized arguments: --stirde (did you mean " \
                                   "--stride?)" in res.stderr, res.stderr
    assert "usage: emoframe label" in res.stderr
    res = _emoframe("lable", str(tmp_path))
    assert res.returncode == 2 and "unknown command 'lable' (did you mean label?)" in res.stderr, res.stderr
