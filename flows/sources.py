"""Turning what the user named (files, folders, globs, s3://bucket/prefix, gs://...) into video sources."""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow.fs as pafs

from workers.video_task import Source

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})


@dataclass
class Listing:
    sources: list[Source] = field(default_factory=list)
    skipped_not_video: list[str] = field(default_factory=list)  # by extension
    missing: list[str] = field(default_factory=list)  # named but not found


def _is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _included(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in exclude)


def _iso(mtime_ns: int | None) -> str | None:
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat()


def list_sources(specs: list[str], include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Listing:
    """Expand every spec; folders and prefixes are listed recursively. Order is stable (sorted), duplicates dropped."""
    out = Listing()
    seen: set[str] = set()

    def add(uri: str, rel: str, info: pafs.FileInfo) -> None:
        if uri in seen or not _included(rel, include, exclude):
            return
        seen.add(uri)
        if not _is_video_name(uri):
            out.skipped_not_video.append(uri)
            return
        mtime = info.mtime_ns if info.mtime_ns is not None else None
        out.sources.append(Source(uri, info.size, _iso(mtime)))

    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            fs, root = pafs.FileSystem.from_uri(spec)
            scheme = spec.split("://", 1)[0]
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.File:
                add(spec, info.base_name, info)
            elif info.type == pafs.FileType.Directory:
                for fi in sorted(fs.get_file_info(pafs.FileSelector(root, recursive=True)), key=lambda f: f.path):
                    if fi.type == pafs.FileType.File:
                        add(f"{scheme}://{fi.path}", fi.path[len(root):].lstrip("/"), fi)
            else:
                out.missing.append(spec)
            continue
        local = pafs.LocalFileSystem()
        spec = spec.removeprefix("file://")
        paths = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not paths or not any(os.path.exists(p) for p in paths):
            out.missing.append(spec)
            continue
        for p in paths:
            p = os.path.abspath(p)
            if os.path.isdir(p):
                sel = pafs.FileSelector(p, recursive=True)
                for fi in sorted(local.get_file_info(sel), key=lambda f: f.path):
                    if fi.type == pafs.FileType.File and not os.path.basename(fi.path).startswith("."):
                        add(fi.path, os.path.relpath(fi.path, p), fi)
            elif os.path.isfile(p):
                add(p, os.path.basename(p), local.get_file_info(p))
    return out
