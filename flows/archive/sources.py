"""Turning what the user named (files, folders, globs, s3://bucket/prefix, gs://bucket/prefix) into video sources.

An object-store URI is ``scheme://bucket/key`` with the key taken literally, as `aws s3` and gsutil take it:
spaces, unicode, ``%`` and ``?`` are part of the key, never percent-decoded or read as a query string. Where
the store is and who we are come from the standard environment, never from the URI: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (any S3-compatible store), AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the rest
of the AWS credential chain); Google's application default credentials for gs://. So no URI, and therefore
no output row or log line built from one, carries a secret.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, cast

import pyarrow.fs as pafs

from emoframe.workers.output.storage import filesystem_for, is_remote

if TYPE_CHECKING:
    from emoframe.workers.task.video_job import Source

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})

# Enough for MPEG-TS's second sync byte (188-byte packets, 192 in M2TS): one sync byte alone would accept one
# random file in 256. Still a single small ranged read per object.
PROBE_BYTES = 200
PROBE_THREADS = 16  # object-store probes are round trips, not work: overlap them
_QUICKTIME_ATOMS = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})  # old .mov lack ftyp
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


class Skip(StrEnum):
    """Why something the run saw is not labelled: the code at the start of each reason in Listing.skipped
    ("code: detail"). Codes are stable (summaries count them, scripts may match them); details are for people.
    Everything found below a named folder or prefix ends in Listing.sources or Listing.skipped, except what
    --include/--exclude leave out (EXCLUDED: only counted, in Listing.excluded) and the run's own output
    (exclude_roots: ours, not counted)."""

    NOT_A_VIDEO = "not_a_video"  # by extension, or a video extension without a known container signature
    HIDDEN = "hidden"  # a name starting with "." below a named folder (.DS_Store, .cache/): never looked into
    DANGLING_LINK = "dangling_link"  # a symlink to nothing (or into a loop of links)
    SPECIAL_FILE = "special_file"  # fifo, socket, device: never opened (reading a fifo blocks)
    UNREADABLE = "unreadable"  # a folder that cannot be listed, an entry that cannot be looked at
    DUPLICATE = "duplicate"  # another name (symlink, hard link) of a file listed under its first name
    EXCLUDED = "excluded"  # left out by --include/--exclude


def _why(code: Skip, detail: str) -> str:
    return f"{code.value}: {detail}"


@dataclass
class Listing:
    sources: list[Source] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # URI -> "code: detail" (code: a Skip), listing order
    missing: list[str] = field(default_factory=list)  # named but not found
    # Only a count: a user who filters wants the rest out of sight, not thousands of rows saying so.
    excluded: int = 0
    warnings: list[str] = field(default_factory=list)  # one line per link loop or folder met twice

    def skip_counts(self) -> dict[str, int]:
        """Skip code -> how many, most first; ``excluded`` (Listing.excluded) included when nonzero."""
        counts = Counter(reason.partition(":")[0] for reason in self.skipped.values())
        if self.excluded:
            counts[Skip.EXCLUDED.value] += self.excluded
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def skipped_not_video(self) -> list[str]:
        """The not_a_video URIs of ``skipped`` (the field before ``skipped``; read-only)."""
        return [uri for uri, why in self.skipped.items() if skip_code(why) == Skip.NOT_A_VIDEO]

    @property
    def skip_reasons(self) -> dict[str, str]:
        """The not_a_video part of ``skipped`` (the field before ``skipped``; read-only)."""
        return {uri: why for uri, why in self.skipped.items() if skip_code(why) == Skip.NOT_A_VIDEO}


def skip_code(reason: str) -> str:
    """``"not_a_video: .txt extension"`` -> ``"not_a_video"``."""
    return reason.partition(":")[0].strip()


@dataclass(frozen=True)
class _Found:
    uri: str
    rel: str  # path below the folder/prefix that was named (the file name for a file named or globbed)
    info: pafs.FileInfo
    fs: pafs.FileSystem
    remote: bool
    identity: object  # one file, whatever its name: (st_dev, st_ino) locally, the URI in an object store


@dataclass(frozen=True)
class _Skipped:
    uri: str
    rel: str
    reason: str


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


def is_video_name(name: str) -> bool:
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
    """Every object below ``root`` in an object store (no links there), hidden ones too, sorted by path."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted((fi for fi in infos if fi.type == pafs.FileType.File), key=lambda fi: fi.path)


def _normal_uri(uri: str) -> str:
    """An object-store URI as compared with exclude_roots: scheme lower-cased (gcs:// is gs://), no end slash."""
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    return f"{'gs' if scheme == 'gcs' else scheme}://{rest.rstrip('/')}"


def _below_any(path: str, roots: tuple[str, ...], sep: str) -> bool:
    return any(path == r or path.startswith(r.rstrip(sep) + sep) for r in roots)


@dataclass(frozen=True)
class _Ours:
    """The run's own output (exclude_roots): never listed and not counted, whatever name reaches it."""

    folders: frozenset[tuple[int, int]] = frozenset()  # local folders, by (st_dev, st_ino)
    real_paths: tuple[str, ...] = ()  # the same folders' real paths: for links into them
    prefixes: tuple[str, ...] = ()  # object-store URIs, normalised

    @classmethod
    def of(cls, roots: tuple[str, ...]) -> _Ours:
        folders, real, prefixes = set(), [], []
        for root in roots:
            if is_remote(root):
                prefixes.append(_normal_uri(root))
                continue
            path = os.path.realpath(root.removeprefix("file://"))
            real.append(path)
            if os.path.isdir(path):
                st = os.stat(path)
                folders.add((st.st_dev, st.st_ino))
        return cls(frozenset(folders), tuple(real), tuple(prefixes))

    def holds_uri(self, uri: str) -> bool:
        return _below_any(_normal_uri(uri), self.prefixes, "/")

    def holds_path(self, path: str) -> bool:
        """Whether a local path, links resolved, lies in our output (realpath: only asked of links and names)."""
        return bool(self.real_paths) and _below_any(os.path.realpath(path), self.real_paths, os.sep)


def _expand_remote(spec: str, ours: _Ours) -> list[_Found | _Skipped] | None:
    scheme = spec.partition("://")[0].lower()
    fs, path = filesystem_for(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        found: list[_Found | _Skipped] = [_Found(f"{scheme}://{path}", info.base_name, info, fs, True,
                                                 f"{scheme}://{path}")]
    elif info.type == pafs.FileType.Directory:
        found = [_remote_entry(f"{scheme}://{path}", fi.path[len(path):].lstrip("/"), fi, fs)
                 for fi in _walk(fs, path)]
    elif not glob.has_magic(path):  # a key holding glob characters was tried literally first
        return None
    else:
        parts = path.split("/")
        fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))  # >= 1: the bucket holds no magic
        root, pattern = "/".join(parts[:fixed]), parts[fixed:]
        found = [_Found(f"{scheme}://{fi.path}", fi.base_name, fi, fs, True, f"{scheme}://{fi.path}")
                 for fi in _walk(fs, root) if not _hidden(rel := fi.path[len(root):].lstrip("/"))
                 and _glob_match(rel.split("/"), pattern)]
        if not found:
            return None
    return [f for f in found if not ours.holds_uri(f.uri)]


def _remote_entry(prefix: str, rel: str, fi: pafs.FileInfo, fs: pafs.FileSystem) -> _Found | _Skipped:
    """An object below a named prefix; below a hidden "folder", that folder stands for all it holds."""
    parts = rel.split("/")
    hidden = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
    if hidden is None:
        return _Found(f"{prefix}/{rel}", rel, fi, fs, True, f"{prefix}/{rel}")
    what = 'name starts with "."' if hidden == len(parts) - 1 else _HIDDEN_FOLDER
    rel = "/".join(parts[:hidden + 1])
    return _Skipped(f"{prefix}/{rel}", rel, _why(Skip.HIDDEN, what))


_HIDDEN_FOLDER = 'folder name starts with "." (not looked into)'
_SPECIAL_FILES = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"))
_LOCAL = pafs.LocalFileSystem()


def _local_file(path: str, rel: str, st: os.stat_result) -> _Found:
    info = pafs.FileInfo(path, pafs.FileType.File, mtime_ns=st.st_mtime_ns, size=st.st_size)
    return _Found(path, rel, info, _LOCAL, False, (st.st_dev, st.st_ino))


def _not_a_folder(path: str, rel: str, st: os.stat_result) -> _Found | _Skipped:
    """A regular file, or the kind of special file it is (never opened: reading a fifo blocks)."""
    if stat.S_ISREG(st.st_mode):
        return _local_file(path, rel, st)
    kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), f"file mode {st.st_mode:o}")
    return _Skipped(path, rel, _why(Skip.SPECIAL_FILE, kind))


def _broken(path: str, rel: str, err: OSError) -> _Skipped:
    """An entry that stat() refuses: a dangling link (or one into a loop of links), or one we may not read."""
    if os.path.islink(path) and err.errno not in (errno.EACCES, errno.EPERM):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        loop = " (a loop of links)" if err.errno == errno.ELOOP else ""
        return _Skipped(path, rel, _why(Skip.DANGLING_LINK, f"-> {target}{loop}"))
    return _Skipped(path, rel, _why(Skip.UNREADABLE, (err.strerror or str(err)).lower()))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _sort_key(entry: os.DirEntry) -> str:
    # "name/" for a folder: walking in this order yields paths in plain string order, as a full sort would
    # ("a b/x" before "a/x"), without holding the whole tree.
    return entry.name + "/" if _is_dir(entry) else entry.name


class _LocalWalk:
    """A local folder, listed recursively with os.scandir. Links are followed, each real folder (by st_dev,
    st_ino) listed once: a link back up (data/self -> .) or a second way into a folder is a warning, not
    another copy of the tree, so the walk ends whatever the links. Names stay those the user sees."""

    def __init__(self, ours: _Ours, warnings: list[str]):
        self.ours, self.warnings = ours, warnings
        self.listed: dict[tuple[int, int], str] = {}  # folders listed in this walk -> the path first listed

    def folder(self, root: str, st: os.stat_result) -> Iterator[_Found | _Skipped]:
        yield from self._folder(root, "", st, False, ())

    def _folder(self, path: str, rel: str, st: os.stat_result, link: bool,
                up: tuple[tuple[int, int], ...]) -> Iterator[_Found | _Skipped]:
        key = (st.st_dev, st.st_ino)
        if key in self.ours.folders or (link and self.ours.holds_path(path)):
            return
        if key in self.listed:
            self._warn(path, self.listed[key], link, key in up)
            return
        self.listed[key] = path
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_sort_key)
        except OSError as err:
            yield _Skipped(path, rel, _why(Skip.UNREADABLE, f"{(err.strerror or str(err)).lower()} (a folder: "
                                                            "nothing below it listed)"))
            return
        for entry in entries:
            yield from self._entry(entry, f"{rel}{entry.name}", (*up, key))

    def _entry(self, entry: os.DirEntry, rel: str,
               up: tuple[tuple[int, int], ...]) -> Iterator[_Found | _Skipped]:
        if entry.name.startswith("."):  # a user's .DS_Store, .Trash, .cache: counted, never looked into
            yield _Skipped(entry.path, rel, _why(Skip.HIDDEN, _HIDDEN_FOLDER if _is_dir(entry)
                                                 else 'name starts with "."'))
            return
        try:
            st = entry.stat()
        except OSError as err:
            yield _broken(entry.path, rel, err)
            return
        link = entry.is_symlink()
        if stat.S_ISDIR(st.st_mode):
            yield from self._folder(entry.path, rel + "/", st, link, up)
        elif not (link and self.ours.holds_path(entry.path)):
            yield _not_a_folder(entry.path, rel, st)

    def _warn(self, path: str, first: str, link: bool, back: bool) -> None:
        if link:
            what = "a link back to a folder already listed" if back else "a link to a folder already listed"
            line = f"{path} -> {first}: {what}; not followed again"
        else:
            line = f"{path}: the same folder as {first}, already listed; not listed again"
        if line not in self.warnings:  # overlapping specs walk the same loop
            self.warnings.append(line)


def _expand_local(spec: str, ours: _Ours, warnings: list[str]) -> Iterator[_Found | _Skipped] | None:
    spec = spec.removeprefix("file://")
    if os.path.exists(spec):  # a name that exists is taken as it is, so "clip[1].mp4" is not read as a glob
        return _named(os.path.abspath(spec), ours, warnings)
    if not glob.has_magic(spec):
        return None
    parts = os.path.abspath(spec).split(os.sep)
    if "**" in parts:  # glob's own ** follows links without end: walk the fixed part and match
        fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
        root = os.sep.join(parts[:fixed]) or os.sep
        found = list(_globbed(root, parts[fixed:], ours, warnings)) if os.path.isdir(root) else []
        return iter(found) if found else None
    paths = sorted(glob.glob(spec))  # no **: as deep as the pattern, so it ends
    return _chain(_named(os.path.abspath(p), ours, warnings) for p in paths) if paths else None


def local_spec_matches(spec: str) -> bool:
    """Whether a local path exists or a glob matches something (the walk ends even with symlink loops)."""
    if os.path.exists(spec.removeprefix("file://")):
        return True
    found = _expand_local(spec, _Ours.of(()), [])
    return found is not None and next(iter(found), None) is not None


def _chain(its: Iterable[Iterator[_Found | _Skipped]]) -> Iterator[_Found | _Skipped]:
    for it in its:
        yield from it


def _named(path: str, ours: _Ours, warnings: list[str]) -> Iterator[_Found | _Skipped]:
    """A file or folder named (or matched by a glob without **): a folder's hidden entries are left out,
    a hidden name given is listed."""
    if ours.holds_path(path):
        return
    try:
        st = os.stat(path)
    except OSError as err:  # a glob matches dangling links too
        yield _broken(path, os.path.basename(path), err)
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _LocalWalk(ours, warnings).folder(path, st)
    else:
        yield _not_a_folder(path, os.path.basename(path), st)


def _globbed(root: str, pattern: list[str], ours: _Ours, warnings: list[str]) -> Iterator[_Found | _Skipped]:
    """What a ** pattern matches below ``root``: files whose path, or a folder above them, matches (as glob
    would name the folder, which is then listed). Hidden names are not matched, as glob's * and ** do not."""
    for f in _LocalWalk(ours, warnings).folder(root, os.stat(root)):
        if isinstance(f, _Skipped) and skip_code(f.reason) == Skip.HIDDEN:
            continue
        parts = f.rel.split("/")
        if any(_glob_match(parts[:i], pattern) for i in range(len(parts), 0, -1)):
            yield f


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


PROBE_BATCH = 512  # candidates probed (and handed to the run) at a time: the listing never has to fit in memory


def list_sources(specs: list[str], include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 exclude_roots: tuple[str, ...] = ()) -> Listing:
    """Every source of ``specs`` at once, in a Listing (see ``iter_sources``)."""
    out = Listing()
    for batch in iter_sources(specs, out, include, exclude, exclude_roots):
        out.sources.extend(batch)
    return out


def iter_sources(specs: list[str], listing: Listing, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 exclude_roots: tuple[str, ...] = (), batch: int = PROBE_BATCH) -> Iterator[list[Source]]:
    """Expand every spec, yielding the video sources a batch at a time as they are found; what is skipped,
    missing, excluded or warned about goes into ``listing`` (its ``sources`` stay empty). Folders and prefixes
    are listed recursively. Order is stable (specs in order, each sorted), duplicates dropped: a URI seen
    again silently, another name of a file already listed (a link, a hard link) as a ``duplicate``.
    Everything found below a named folder ends in a batch or in ``listing.skipped`` (reasons: Skip), or is
    counted in ``listing.excluded`` (--include/--exclude); anything below ``exclude_roots`` (the run's output:
    local paths or object-store URIs) is left out unseen. A file with a video extension whose first bytes
    carry no known container signature is skipped with the reason; an empty one is kept (the pipeline records
    it as ``empty_file``), and so is one that cannot be read here (the pipeline records why). A caller that
    handles ``listing.skipped`` after each batch has already had the first name of every duplicate there.
    Memory: the names seen (to drop duplicates) and one batch; an object-store prefix is listed in one call."""
    ours = _Ours.of(exclude_roots)
    # What must be remembered across the whole listing to drop duplicates: one entry per file, not per batch.
    seen: set[str] = set()
    first_name: dict[object, str] = {}  # file identity -> the URI it is listed under
    candidates: list[_Found] = []
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        for spec in specs:
            local = not is_remote(spec)
            if not glob.has_magic(spec) and (ours.holds_path(spec.removeprefix("file://")) if local
                                             else ours.holds_uri(spec)):
                # Left out like the rest of the output, but a name the user gave deserves a word.
                listing.warnings.append(f"{spec} is inside this run's output (--out): emoframe never labels "
                                        "its own output; keep the videos outside it")
            found = _expand_local(spec, ours, listing.warnings) if local else _expand_remote(spec, ours)
            if found is None:
                listing.missing.append(spec)
                continue
            for f in found:
                if f.uri in seen:
                    continue
                seen.add(f.uri)
                why = _skip_reason(f, include, exclude, first_name)
                if why == Skip.EXCLUDED:
                    listing.excluded += 1
                elif why:
                    listing.skipped[f.uri] = why
                else:
                    candidates.append(cast(_Found, f))  # a _Skipped always has a reason
                if len(candidates) >= batch:
                    yield _probed(candidates, pool, listing)
                    candidates = []
        if candidates:
            yield _probed(candidates, pool, listing)


def _probed(candidates: list[_Found], pool: ThreadPoolExecutor, listing: Listing) -> list[Source]:
    """The candidates that are videos by their first bytes (the rest go to ``listing.skipped``)."""
    from emoframe.workers.task.video_job import Source

    to_probe = [f for f in candidates if f.info.size]
    probes = dict(zip((f.uri for f in to_probe), pool.map(_probe, to_probe)))
    sources = []
    for f in candidates:
        head, etag = probes.get(f.uri, (None, None))
        if head is not None and sniff_container(head) is None:
            listing.skipped[f.uri] = _why(Skip.NOT_A_VIDEO, f"no known container signature ({head[:8].hex()})")
            continue
        # An object's ETag says "same content" better than its time; mtime (+ size) where there is none.
        sources.append(Source(f.uri, f.info.size, etag or _iso(f.info.mtime_ns)))
    return sources


def _skip_reason(f: _Found | _Skipped, include: tuple[str, ...], exclude: tuple[str, ...],
                 first_name: dict[object, str]) -> str | None:
    """Why an entry is not a candidate (Skip.EXCLUDED alone for a filtered one), None for a candidate.
    Hidden entries and unreadable folders were never looked into, so no pattern applies to them."""
    if isinstance(f, _Skipped) and skip_code(f.reason) in (Skip.HIDDEN, Skip.UNREADABLE):
        return f.reason
    if not _included(f.rel, include, exclude):
        return Skip.EXCLUDED
    if isinstance(f, _Skipped):
        return f.reason
    if f.identity in first_name:
        return _why(Skip.DUPLICATE, f"same file as {first_name[f.identity]}")
    first_name[f.identity] = f.uri
    if not is_video_name(f.uri):
        ext = os.path.splitext(f.uri)[1]
        return _why(Skip.NOT_A_VIDEO, f"{ext} extension" if ext else "no extension")
    return None
