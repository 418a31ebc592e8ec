"""Turning what the user named (files, folders, globs, s3://bucket/prefix, gs://bucket/prefix) into video sources.

An object-store URI is ``scheme://bucket/key`` with the key taken literally, as `aws s3` and gsutil take it:
spaces, unicode, ``%`` and ``?`` are part of the key, never percent-decoded or read as a query string. Where
the store is and who we are come from the standard environment, never from the URI: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (any S3-compatible store), AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the rest
of the AWS credential chain); Google's application default credentials for gs://. So no URI, and therefore
no output row or log line built from one, carries a secret.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from workers.storage import filesystem_for

if TYPE_CHECKING:  # imported where used: workers.video_task pulls in torch, and `emoframe query` needs none of it
    from workers.video_task import Source

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})

# Enough for MPEG-TS's second sync byte (188-byte packets, 192 in M2TS): one sync byte alone would accept one
# random file in 256. Still a single small ranged read per object.
PROBE_BYTES = 200
PROBE_THREADS = 16  # object-store probes are round trips, not work: overlap them
_QUICKTIME_ATOMS = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})  # old .mov lack ftyp
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


@dataclass
class Listing:
    sources: list[Source] = field(default_factory=list)
    skipped_not_video: list[str] = field(default_factory=list)  # URIs: by extension or by their first bytes
    skip_reasons: dict[str, str] = field(default_factory=dict)  # skipped URI -> why
    missing: list[str] = field(default_factory=list)  # named but not found


@dataclass(frozen=True)
class _Found:
    uri: str
    rel: str  # path below the folder/prefix that was named (the file name for a file named or globbed)
    info: pafs.FileInfo
    fs: pafs.FileSystem
    remote: bool


def sniff_container(head: bytes) -> str | None:
    """The container format whose signature ``head`` (a file's first bytes) carries, or None."""
    if head[4:8] in _QUICKTIME_ATOMS:
        return "mp4/mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska/webm"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg-ps"  # pack header; a sequence header starts a bare MPEG-1/2 video stream (.mpg too)
    if _ts_sync(head, 0, 188) or _ts_sync(head, 4, 192):
        return "mpeg-ts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(_ASF_GUID):
        return "asf"
    return None


def _ts_sync(head: bytes, offset: int, packet: int) -> bool:
    """A sync byte at ``offset`` and, when the file is that long, one packet further."""
    return len(head) > offset and head[offset] == 0x47 and (len(head) <= offset + packet
                                                             or head[offset + packet] == 0x47)


def _is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _included(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """A pattern matches the path below the named folder or just the file name (case-sensitive, like S3 keys)."""
    name = rel.rsplit("/", 1)[-1]

    def hit(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(name, g) for g in patterns)

    return (not include or hit(include)) and not hit(exclude)


def _glob_match(parts: list[str], patterns: list[str]) -> bool:
    """Glob over path segments: * and ? stay within a segment, a ** segment spans any number of them."""
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_glob_match(parts[i:], patterns[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], patterns[0]) and _glob_match(parts[1:], patterns[1:])


def _iso(mtime_ns: int | None) -> str | None:
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat()


def _walk(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """Every non-hidden file below ``root`` (hidden: a name or folder starting with '.'), sorted by path."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = (fi for fi in infos if fi.type == pafs.FileType.File and not _hidden(fi.path[len(root):].strip("/")))
    return sorted(files, key=lambda fi: fi.path)


def _expand_remote(spec: str) -> list[_Found] | None:
    scheme = spec.partition("://")[0].lower()
    fs, path = filesystem_for(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [_Found(f"{scheme}://{path}", info.base_name, info, fs, True)]
    if info.type == pafs.FileType.Directory:
        return [_Found(f"{scheme}://{fi.path}", fi.path[len(path):].lstrip("/"), fi, fs, True)
                for fi in _walk(fs, path)]
    if not glob.has_magic(path):  # a key holding glob characters was tried literally first
        return None
    parts = path.split("/")
    fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))  # >= 1: the bucket holds no magic
    root, pattern = "/".join(parts[:fixed]), parts[fixed:]
    return [_Found(f"{scheme}://{fi.path}", fi.base_name, fi, fs, True) for fi in _walk(fs, root)
            if _glob_match(fi.path[len(root):].lstrip("/").split("/"), pattern)] or None


def _expand_local(spec: str) -> list[_Found] | None:
    local = pafs.LocalFileSystem()
    spec = spec.removeprefix("file://")
    if os.path.exists(spec):  # a name that exists is taken as it is, so "clip[1].mp4" is not read as a glob
        paths = [spec]
    elif glob.has_magic(spec):
        paths = sorted(glob.glob(spec, recursive=True))
    else:
        return None
    if not paths:
        return None
    found: list[_Found] = []
    for p in map(os.path.abspath, paths):
        if os.path.isdir(p):
            found += [_Found(fi.path, os.path.relpath(fi.path, p).replace(os.sep, "/"), fi, local, False)
                      for fi in _walk(local, p)]
        elif os.path.isfile(p):
            found.append(_Found(p, os.path.basename(p), local.get_file_info(p), local, False))
    return found


def _probe(f: _Found) -> tuple[bytes | None, str | None]:
    """The first PROBE_BYTES of a file and, for an object, its ETag; (None, None) when it cannot be read."""
    try:
        # open_input_file: a ranged read on S3 and GCS (an input stream on GCS would start a whole download).
        with f.fs.open_input_file(f.info.path) as fh:
            head = fh.read(PROBE_BYTES)
            meta = fh.metadata() if f.remote else {}
    except OSError:
        return None, None
    etag = next((v for k, v in meta.items() if k.lower() == "etag"), None)
    return head, etag.decode().strip('"') if etag else None


def list_sources(specs: list[str], include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Listing:
    """Expand every spec; folders and prefixes are listed recursively, hidden files left out. Order is stable
    (specs in order, each sorted), duplicates dropped. A file with a video extension whose first bytes carry
    no known container signature is skipped with the reason; an empty one is kept (the pipeline records it as
    ``empty_file``), and so is one that cannot be read here (the pipeline records why)."""
    from workers.video_task import Source

    out = Listing()
    seen: set[str] = set()
    candidates: list[_Found] = []
    for spec in specs:
        local = "://" not in spec or spec.startswith("file://")
        found = _expand_local(spec) if local else _expand_remote(spec)
        if found is None:
            out.missing.append(spec)
            continue
        for f in found:
            if f.uri in seen or not _included(f.rel, include, exclude):
                continue
            seen.add(f.uri)
            if not _is_video_name(f.uri):
                out.skipped_not_video.append(f.uri)
                ext = os.path.splitext(f.uri)[1]
                out.skip_reasons[f.uri] = f"{ext or 'no extension'}: not a video file extension"
                continue
            candidates.append(f)

    to_probe = [f for f in candidates if f.info.size]
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        probes = dict(zip((f.uri for f in to_probe), pool.map(_probe, to_probe)))
    for f in candidates:
        head, etag = probes.get(f.uri, (None, None))
        if head is not None and sniff_container(head) is None:
            out.skipped_not_video.append(f.uri)
            out.skip_reasons[f.uri] = f"no known video container signature in its first bytes ({head[:8].hex()})"
            continue
        # An object's ETag says "same content" better than its time; mtime (+ size) where there is none.
        out.sources.append(Source(f.uri, f.info.size, etag or _iso(f.info.mtime_ns)))
    return out
