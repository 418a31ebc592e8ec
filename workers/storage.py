"""Where data lives: local paths and object-store URIs (s3://, gs://) as pyarrow filesystems."""

from __future__ import annotations

import glob
import os

import pyarrow.fs as pafs

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs"})  # gcs:// is pyarrow's alias of gs://


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
    bucket, _, key = rest.partition("/")
    if "@" in bucket:  # bucket names cannot contain '@': this is user:secret@bucket
        raise ValueError(f"{scheme}://***@{bucket.rsplit('@', 1)[1]}/{key}: credentials in a URI are not accepted "
                         "(URIs are written into the output); use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                         "your provider's credential chain")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name")
    if glob.has_magic(bucket):
        raise ValueError(f"{uri}: globs work in keys, not in bucket names")
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    key = key.rstrip("/")
    return fs, f"{bucket}/{key}" if key else bucket
