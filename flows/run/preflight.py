"""Checks a run passes before any service starts: what was named exists, the output can be written, the
Triton URL answers, no URI carries a secret. Each failure is one line that says what to fix (the CLI exits 2).

They run before Prefect is involved, so a refused URI never reaches a flow run's stored parameters, and a
typo answers in seconds instead of after a Prefect server, Ray and Triton have started.
"""

from __future__ import annotations

import glob
import uuid
from collections.abc import Iterable

import pyarrow.fs as pafs

from emoframe.flows.archive.sources import local_spec_matches
from emoframe.workers.spec.terminal import shown
from emoframe.workers.spec.errors import EmoframeError
from emoframe.workers.output.storage import CredentialsInURIError, check_no_credentials, filesystem_for, is_remote

TRITON_CHECK_S = 5.0  # a wrong host or port should answer within seconds


class PreflightError(EmoframeError):
    """The run cannot start as asked; the message says what to do."""


def check_uris(sources: Iterable[str], out: str) -> None:
    """No secret in any URI, and only schemes emoframe reads. Nothing here echoes a URI whole."""
    for what, uri in [*(("source", s) for s in sources), ("--out", out)]:
        try:
            check_no_credentials(uri)
            if is_remote(uri):
                filesystem_for(uri)
        except CredentialsInURIError as exc:
            raise PreflightError(f"{what}: {exc}") from None
        except ValueError as exc:  # unknown scheme, no bucket: messages built not to carry userinfo
            raise PreflightError(f"{what}: {exc}") from None


def _remote_exists(spec: str) -> bool:
    fs, path = filesystem_for(spec)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return True
    if glob.has_magic(path):  # the listing matches the pattern; here only its bucket must be there
        return fs.get_file_info(path.split("/", 1)[0]).type != pafs.FileType.NotFound
    return False


def missing_sources(sources: Iterable[str]) -> list[str]:
    """The named sources that do not exist (a glob that matches nothing counts as missing)."""
    missing = []
    for spec in sources:
        if is_remote(spec):
            found = _remote_exists(spec)
        else:
            found = local_spec_matches(spec)
        if not found:
            missing.append(spec)
    return missing


def check_sources(sources: list[str]) -> None:
    if not sources:
        raise PreflightError("no videos named: give files, folders, globs or s3:// / gs:// URIs to label")
    try:
        missing = missing_sources(sources)
    except OSError as exc:  # storage unreachable or access denied: the user's setup to fix
        raise PreflightError(f"cannot read the sources' storage: {shown(str(exc))}") from None
    if missing:
        names = ", ".join(shown(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                             else "")
        raise PreflightError(f"not found: {names}. Check the path (a glob must match at least one file)")


def check_output(out: str) -> None:
    """``out`` is a folder (or bucket prefix) this process can create files in: a probe file is written and
    removed. A bucket that does not exist is an error here: emoframe never creates buckets."""
    fs, base = filesystem_for(out)
    if is_remote(out):
        bucket = base.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type
        except OSError as exc:
            raise PreflightError(f"--out: cannot reach bucket {shown(bucket)}: {shown(str(exc))}") from None
        if found == pafs.FileType.NotFound:
            raise PreflightError(f"--out: bucket {shown(bucket)} does not exist: create it (emoframe never creates "
                                 "buckets) or name another")
    else:
        kind = fs.get_file_info(base).type
        if kind == pafs.FileType.File:
            raise PreflightError(f"--out {shown(base)} is a file: name a folder (it is created if missing)")
    probe = f"{base}/.emoframe-write-check-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except OSError as exc:
        raise PreflightError(f"--out {shown(out if is_remote(out) else base)} is not writable here: "
                             f"{shown(str(exc).splitlines()[0])}") from None


def check_triton(url: str) -> None:
    """A gRPC host:port whose Triton serves this client's contract, answered within TRITON_CHECK_S."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        raise PreflightError(f"--triton-url {shown(url)}: emoframe talks gRPC; give host:port of Triton's gRPC "
                             "port (8001 by default), without http://")
    if scheme and scheme != "grpc" or ":" not in url.removeprefix("grpc://"):
        raise PreflightError(f"--triton-url {shown(url)}: give host:port of Triton's gRPC port, e.g. "
                             "127.0.0.1:8001")
    from emoframe.workers.spec.errors import ContractMismatchError, ServiceUnavailableError
    from emoframe.workers.inference.triton_client import TritonClient

    try:
        with TritonClient(url, timeout_s=TRITON_CHECK_S, retries=0) as client:
            client.check_ready()
    except (ServiceUnavailableError, ContractMismatchError) as exc:
        hint = (" (8000 is Triton's HTTP port; emoframe uses gRPC, 8001 by default)"
                if url.rstrip("/").endswith(":8000") else "")
        raise PreflightError(f"--triton-url: {shown(str(exc).splitlines()[0])}{hint}") from None


def preflight(sources: list[str], out: str, triton_url: str | None = None) -> None:
    """Every check, cheapest first. Raises PreflightError."""
    check_uris(sources, out)
    check_sources(sources)
    check_output(out)
    if triton_url:
        check_triton(triton_url)
