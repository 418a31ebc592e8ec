"""Where data lives: local paths and object-store URIs (s3://, gs://) as pyarrow filesystems."""

from __future__ import annotations

import glob
import hashlib
import os
import re
from datetime import timedelta

import pyarrow.fs as pafs

from emoframe.workers.spec.retries import GCS_RETRY_LIMIT_S

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs"})  # gcs:// is pyarrow's alias of gs://

# Query-string names that carry a secret: presigned S3 (X-Amz-*), Azure SAS (sig), and the names people reach for.
_SECRET_PARAMS = re.compile(
    r"[?&;](?:x-amz-(?:credential|signature|security-token)|aws_(?:access_key_id|secret_access_key|session_token)"
    r"|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?(?:access[_-]?)?key)?|session[_-]?token|token|sig|signature"
    r"|password|passwd|pwd|api[_-]?key|credentials?)=", re.IGNORECASE)


class CredentialsInURIError(ValueError):
    """A URI carries a secret. Its message never contains the URI."""


def check_no_credentials(uri: str) -> None:
    """Refuse a URI that carries credentials, whatever characters the secret holds, without echoing any of it.

    The authority (up to the first ``/``) is userinfo when it holds an ``@`` or a ``:``, which bucket names
    cannot. The ``:`` matters: AWS secret keys contain ``/``, so in ``s3://AKIA:ab/cd@bucket/key`` the
    authority is ``AKIA:ab`` and the ``@`` lies beyond it. Keys stay literal otherwise (``?`` and ``@`` are
    legal in object keys); only a query-like ``name=`` that names a secret is refused.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() == "file":
        return
    authority = rest.split("/", 1)[0]
    where = None
    if "@" in authority or ":" in authority:
        where = "user name or password before the bucket"
    elif _SECRET_PARAMS.search(rest):
        where = "a key-bearing query string"
    if where:
        raise CredentialsInURIError(
            f"a {scheme.lower()}:// URI with credentials in it ({where}) is not accepted: URIs are written into "
            "the output and the run's records. Give the bare location (s3://bucket/prefix) and the credentials "
            "through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile, or your provider's credential chain)")


def is_remote(uri: str) -> bool:
    """An object-store URI (s3://, gs://): listed and read through its filesystem, downloaded for decord. A
    local path or a file:// URI is not."""
    return "://" in uri and not uri.lower().startswith("file://")




def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a local path, file://, s3:// or gs:// URI.

    Local paths come back absolute with ``..`` resolved. For a bucket, only ``scheme://bucket`` goes through
    pyarrow's URI parser (which rejects spaces and decodes ``%xx`` in keys); pyarrow 25 takes the endpoint
    from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and, with such an endpoint, defaults the region to us-east-1
    instead of asking AWS where the bucket lives. Messages never echo credentials.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() == "file":
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    scheme = scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        # Only the scheme is quoted: the rest of an unknown URI may hold a password.
        raise ValueError(f"unsupported URI scheme {scheme}://: use a local path, s3://bucket/key or gs://bucket/key")
    check_no_credentials(uri)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name")
    if glob.has_magic(bucket):
        raise ValueError(f"{uri}: globs work in keys, not in bucket names")
    if scheme == "s3":
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    else:
        # pyarrow's default retries a failing call for 15 minutes, in silence: on a machine without Google
        # credentials `emoframe label gs://...` seemed hung. Bounded, the call fails with the reason
        # ("Could not create a OAuth2 access token ...") and a transient outage is retried by the task.
        fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=GCS_RETRY_LIMIT_S))
    key = key.rstrip("/")
    return fs, f"{bucket}/{key}" if key else bucket


FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a file


def content_fingerprint(uri: str, size: int | None = None) -> str:
    """``"<size>:<sha256 of the first and last MiB>"``: the same content under another name or place gives the
    same value. Two ranged reads whatever the file's size (one when it is at most 2 MiB), so cheap on S3.
    Not a proof of equality, but a container's header (first MiB) and index or tail (last MiB) plus the exact
    size make a collision between two different videos implausible. Raises OSError when unreadable."""
    fs, path = filesystem_for(uri)
    if size is None:
        size = fs.get_file_info(path).size
    h = hashlib.sha256()
    with fs.open_input_file(path) as f:  # random access: a ranged GET per read on S3 and GCS
        if size <= 2 * FINGERPRINT_SPAN:
            h.update(f.read(size))
        else:
            h.update(f.read(FINGERPRINT_SPAN))
            f.seek(size - FINGERPRINT_SPAN)
            h.update(f.read(FINGERPRINT_SPAN))
    return f"{size}:{h.hexdigest()[:32]}"


def source_exists(uri: str) -> bool:
    """Whether a file (or object) is still at ``uri``."""
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type == pafs.FileType.File
