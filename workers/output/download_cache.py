"""One download of a remote video per node, shared by every process on the node that reads it.

decord needs a local file, so a remote source (s3://, gs://) is copied to the node first. A long video is
labelled by several tasks (workers/task/segments.py), most of them on the same node: each used to download
the whole object. Here the copy is kept in ``<tmp>/emoframe-downloads-<uid>/`` under a name made of the
source's identity (its URI, size and mtime or ETag: what the ledger compares), and:

- one process downloads, under an exclusive ``flock`` of the entry's lock file; the others wait for that
  lock (reporting heartbeats, so the isolation watchdog does not take a wait for a hang) and then share the
  file;
- a download goes to ``<key>.part-<pid>-<random>`` and is renamed only once its size is the object's: a
  partial download is never used (a killed downloader leaves a part file that the next holder of the lock
  removes);
- each user holds a lease, a file ``<key>.lease-<pid>-<random>``; the last one out removes the copy.
  ``hold`` takes a lease without downloading: a video task holds its video's entry for as long as it works on
  it, so its probe and its segments' waves (each a child process that ends) share one download; on the
  other nodes a segment's task holds it a while longer (``linger_s``: a lease file ``<key>.linger-<deadline>-``)
  so that the next wave's segment there finds it, and the video task ends that with ``let_go``;
- a lease whose pid is dead (a killed task or child) does not count: ``sweep`` (at each use, and at the start
  of a run) removes such leases, parts left by dead downloaders, and entries nobody holds any more.

Local sources are never copied.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from emoframe.workers.processes.lifeline import pid_alive
from emoframe.workers.spec.errors import BadInputError, Reason, StorageUnavailableError
from emoframe.workers.output.storage import filesystem_for, is_remote

CHUNK_BYTES = 1 << 22  # one read of the object (a ranged GET on S3)
TICK_S = 5.0  # heartbeat interval while waiting for another process's download
_PART = ".part-"
_LEASE = ".lease-"
_LINGER = ".linger-"  # + "<deadline, unix seconds>-<random>": a lease that outlives its process, until then
_COPY = ".copy"
_OWNED = re.compile(rf"^([0-9a-f]{{32}})(?:{re.escape(_PART)}|{re.escape(_LEASE)}|{re.escape(_LINGER)})(\d+)-")


def cache_root() -> Path:
    """This node's cache folder (per user: the temp folder may be shared)."""
    return Path(tempfile.gettempdir()) / f"emoframe-downloads-{os.getuid()}"


def entry_key(uri: str, size: int | None, version: str | None) -> str:
    """The entry of one version of one object: a changed object (size, mtime or ETag) gets another."""
    return hashlib.sha256(f"{uri}\0{size}\0{version}".encode()).hexdigest()[:32]


def _no_tick() -> None:
    pass


@contextlib.contextmanager
def _locked(root: Path, key: str, tick: Callable[[], None] = _no_tick, wait: bool = True) -> Iterator[bool]:
    """The entry's exclusive lock (yields False if ``wait`` is off and another process holds it). The lock file
    is removed by the last user while it holds the lock, so a lock taken on a file since unlinked is retried."""
    path = root / f"{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            last = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    time.sleep(0.1)
                    if time.monotonic() - last >= TICK_S:
                        tick()
                        last = time.monotonic()
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return
        finally:
            os.close(fd)  # releases the lock


def _entries(root: Path, key: str) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.name.startswith(key)]
    except FileNotFoundError:
        return []


def _live_leases(root: Path, key: str) -> int:
    """Leases of live processes; those of dead ones are removed. Call with the entry locked."""
    live = 0
    for p in _entries(root, key):
        m = _OWNED.match(p.name)
        if m is None or p.name.startswith(key + _PART):
            continue
        if (pid_alive(int(m.group(2))) if p.name.startswith(key + _LEASE) else int(m.group(2)) > time.time()):
            live += 1
        else:
            p.unlink(missing_ok=True)
    return live


def _drop_if_unused(root: Path, key: str) -> bool:
    """Removes the entry (copy, parts, lock file) when no live process holds a lease. Call with it locked."""
    if _live_leases(root, key):
        return False
    for p in _entries(root, key):
        if not p.name.endswith(".lock"):
            p.unlink(missing_ok=True)
    (root / f"{key}.lock").unlink(missing_ok=True)
    return True


def sweep(root: Path | None = None) -> list[str]:
    """Removes the entries that no live process holds (left by killed runs, tasks or children). Entries whose
    lock is held (a download in progress) are left to their users. Returns the keys removed."""
    root = root or cache_root()
    try:
        names = [p.name for p in root.iterdir()]
    except FileNotFoundError:
        return []
    removed = []
    for key in sorted({n[:32] for n in names if re.match(r"^[0-9a-f]{32}\.", n)}):
        with _locked(root, key, wait=False) as mine:
            if mine and _drop_if_unused(root, key):
                removed.append(key)
    return removed


class _Lease:
    def __init__(self, root: Path, key: str):
        self.root, self.key = root, key
        self.path = root / f"{key}{_LEASE}{os.getpid()}-{secrets.token_hex(4)}"

    def take(self) -> None:  # with the entry locked
        self.path.touch()

    def give_back(self, linger_s: float = 0.0) -> None:
        with _locked(self.root, self.key):
            if linger_s > 0:
                deadline = int(time.time() + linger_s) + 1
                self.path.rename(self.root / f"{self.key}{_LINGER}{deadline}-{secrets.token_hex(4)}")
            else:
                self.path.unlink(missing_ok=True)
                _drop_if_unused(self.root, self.key)


def _download(uri: str, dest: Path, tick: Callable[[], None]) -> None:
    """The whole object into ``dest``, checked against the object's size; bad-input and storage errors typed as
    the pipeline expects them."""
    fs, path = filesystem_for(uri)
    try:
        size = fs.get_file_info(path).size
        if size is None:
            raise FileNotFoundError(path)
        got = 0
        with fs.open_input_stream(path) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                out.write(chunk)
                got += len(chunk)
                tick()
    except FileNotFoundError:
        raise BadInputError(Reason.NOT_FOUND, f"{uri} was deleted after it was listed") from None
    except OSError as exc:  # the store, not the file: retried
        raise StorageUnavailableError(f"reading {uri}: {str(exc).splitlines()[0][:300]}") from None
    if got != size:  # cut short, or replaced while it was read
        raise StorageUnavailableError(f"reading {uri}: got {got} bytes of {size}")


@contextlib.contextmanager
def hold(uri: str, size: int | None = None, version: str | None = None, linger_s: float = 0.0,
         root: Path | None = None) -> Iterator[None]:
    """Keeps this node's copy of a remote source (downloaded by whoever needs it first) until the block ends,
    so that the processes it starts one after another share one download; ``linger_s`` > 0 keeps it that
    much longer (or until ``let_go``). Nothing for a local source."""
    if not is_remote(uri):
        yield
        return
    root = root or cache_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = entry_key(uri, size, version)
    lease = _Lease(root, key)
    with _locked(root, key):
        lease.take()
    try:
        yield
    finally:
        lease.give_back(linger_s)


def let_go(uri: str, size: int | None = None, version: str | None = None, root: Path | None = None) -> None:
    """Ends the lingering holds of this node's copy (removed now unless a process still holds it)."""
    if not is_remote(uri):
        return
    root = root or cache_root()
    key = entry_key(uri, size, version)
    if not (root / f"{key}.lock").exists():
        return
    with _locked(root, key):
        for p in _entries(root, key):
            if p.name.startswith(key + _LINGER):
                p.unlink(missing_ok=True)
        _drop_if_unused(root, key)


@contextlib.contextmanager
def local_copy(uri: str, size: int | None = None, version: str | None = None, tick: Callable[[], None] = _no_tick,
               root: Path | None = None) -> Iterator[str]:
    """A local path for decord: the file itself, or this node's shared copy of a remote object (``size`` and
    ``version``, its size and mtime or ETag as listed, name the copy). ``tick`` is called while this waits or
    downloads."""
    if not is_remote(uri):
        yield uri.removeprefix("file://")
        return
    root = root or cache_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep(root)
    key = entry_key(uri, size, version)
    copy = root / f"{key}{_COPY}{os.path.splitext(uri)[1][:10]}"
    lease = _Lease(root, key)
    with _locked(root, key, tick):
        lease.take()
        try:
            if not copy.exists():
                for p in _entries(root, key):  # parts of a downloader that died: we hold the lock now
                    if p.name.startswith(key + _PART):
                        p.unlink(missing_ok=True)
                part = root / f"{key}{_PART}{os.getpid()}-{secrets.token_hex(4)}"
                try:
                    _download(uri, part, tick)
                    os.rename(part, copy)
                finally:
                    part.unlink(missing_ok=True)
        except BaseException:
            lease.path.unlink(missing_ok=True)
            _drop_if_unused(root, key)
            raise
    try:
        yield str(copy)
    finally:
        lease.give_back()
