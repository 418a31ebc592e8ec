"""The state area ``<out>/_state/``: run bookkeeping beside the tables, out of every reader's way (pyarrow's dataset
discovery skips names starting with ``_``, and the ``frames/*/*.parquet`` glob never reaches it).

    _state/leases/<id>.json    a run (or prune) writing per-video files; heartbeat every TTL/6
    _state/lock/<id>.json      a claim on the compacted files: one holder at a time (compact, evict, recover)
    _state/journal/<gen>.json  a compaction's intent: inputs, outputs, phase (see flows/archive/compact.py)
    _state/staging/<gen>/      a compaction's outputs before they are published
    _state/tritonserver.log    the embedded Triton's log (local output)

Works on a local folder and on an object store, where a write is atomic and there is neither rename nor a
conditional create. So exclusivity is built from writes and listings alone (strong read-after-write and
list-after-write consistency, which S3, GCS, SeaweedFS and local filesystems give): each contender writes its
claim first and lists second. Of two contenders at least one sees the other; whoever sees another live claim
withdraws and retries later. Two may both withdraw (then both retry after a random pause); two never both go.

Liveness: a claim or lease is live while its holder refreshes it (a heartbeat thread) within ``ttl_s``; one
written by a process of this host that no longer exists is dead at once. A holder stopped (SIGSTOP, a suspended
laptop) for longer than the TTL loses its claim: keep the TTL above any pause you expect
(EMOFRAME_LEASE_TTL_S, default 120 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import pyarrow.fs as pafs
import psutil

STATE_DIR = "_state"
LEASES, LOCK, JOURNAL, STAGING = "leases", "lock", "journal", "staging"
TRITON_LOG = "tritonserver.log"
COMPACT, EVICT, RECOVER = "compact", "evict", "recover"  # kinds of lock claims


def ttl_s() -> float:
    return float(os.environ.get("EMOFRAME_LEASE_TTL_S", "120"))


def state_path(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), STATE_DIR, *parts])


def put_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` atomically: a rename locally, a single PUT on an object store (atomic there)."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON at ``path``, or None when it is gone (deleted meanwhile) or half-written by a dead local writer."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    except OSError as exc:  # S3 reports a missing key as a generic OSError
        if "NoSuchKey" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def list_json(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json"))


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass  # gone already


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_live(record: dict, now: float | None = None) -> bool:
    """Whether the holder of a lease or claim is still there (see the module's note on liveness)."""
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return False
    return (now or time.time()) - float(record.get("heartbeat", 0)) <= float(record.get("ttl_s", ttl_s()))


@dataclass
class Held:
    """A lease or claim file refreshed by a daemon thread until released."""

    fs: pafs.FileSystem
    path: str
    record: dict
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def write(self) -> None:
        self.record["heartbeat"] = time.time()
        put_bytes(self.fs, self.path, json.dumps(self.record).encode())

    def start_heartbeat(self) -> None:
        self._stop = threading.Event()
        interval = float(self.record["ttl_s"]) / 6

        def beat() -> None:
            while not cast(threading.Event, self._stop).wait(interval):  # set above, never unset
                try:
                    self.write()
                except OSError:
                    pass  # a store hiccup: the next beat tries again, well inside the TTL

        self._thread = threading.Thread(target=beat, name=f"emoframe-heartbeat-{self.record['id']}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            cast(threading.Thread, self._thread).join(timeout=30)  # started right after _stop was set
        delete_quietly(self.fs, self.path)


def _record(kind: str, what: str) -> dict:
    return {"id": f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}", "kind": kind, "what": what,
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "ttl_s": ttl_s()}


def live_records(fs: pafs.FileSystem, folder: str, *, sweep: bool = False) -> list[dict]:
    """The live records in ``folder``; with ``sweep`` the files of dead holders are deleted on the way."""
    live, now = [], time.time()
    for path in list_json(fs, folder):
        rec = read_json(fs, path)
        if rec is None:
            continue
        if is_live(rec, now):
            live.append(rec)
        elif sweep:
            delete_quietly(fs, path)
    return live


class LockBusy(RuntimeError):
    """Another holder has the compacted files; the message names it."""


def _describe(rec: dict) -> str:
    return f"{rec.get('kind')} by pid {rec.get('pid')} on {rec.get('host')} ({rec.get('what', '')})"


@contextlib.contextmanager
def exclusive(fs: pafs.FileSystem, base: str, kind: str, what: str = "", *, timeout_s: float = 600.0,
              on_wait: Callable[[str], None] | None = None) -> Iterator[Held]:
    """Hold the claim on the compacted files of the output at ``base``: compaction, eviction and journal
    recovery each run alone. Waits (random back-off) up to ``timeout_s`` for other holders, then raises
    LockBusy naming them."""
    folder = state_path(base, LOCK)
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        held = Held(fs, f"{folder}/{(rec := _record(kind, what))['id']}.json", rec)
        held.write()
        others = [r for r in live_records(fs, folder, sweep=True) if r["id"] != rec["id"]]
        if not others:
            break
        delete_quietly(fs, held.path)  # withdraw: a contender that sees us withdraws too, or waits
        if time.monotonic() > deadline:
            raise LockBusy(f"the output's compacted files are busy: {'; '.join(map(_describe, others))}")
        if on_wait and not told:
            on_wait(f"waiting for {_describe(others[0])}")
            told = True
        time.sleep(random.uniform(0.2, 1.0))
    held.start_heartbeat()
    try:
        yield held
    finally:
        held.release()


def live_leases(fs: pafs.FileSystem, base: str, ignore: frozenset[str] = frozenset()) -> list[dict]:
    return [r for r in live_records(fs, state_path(base, LEASES), sweep=True) if r["id"] not in ignore]


def journals(fs: pafs.FileSystem, base: str) -> list[str]:
    return list_json(fs, state_path(base, JOURNAL))


# Phases of a compaction's journal. STAGING: outputs being written under _state/staging/, nothing published;
# a killed compaction is rolled back (its staging deleted). PUBLISH: every output is complete in staging; a
# killed compaction is rolled forward (outputs moved into place, then inputs deleted). Both steps are
# idempotent, so a recovery killed half-way is finished by the next one.
PHASE_STAGING, PHASE_PUBLISH = "staging", "publish"


def write_journal(fs: pafs.FileSystem, base: str, journal: dict) -> str:
    path = f"{state_path(base, JOURNAL)}/{journal['gen']}.json"
    put_bytes(fs, path, json.dumps(journal).encode())
    return path


def publish(fs: pafs.FileSystem, journal: dict, step: Callable[[str], None] = lambda name: None) -> float:
    """Outputs into place, then inputs out of the folders readers glob: a reader may see a row twice in
    between, never miss one. Returns how long that lasted. Locally the inputs are renamed into the journal's
    ``staging`` folder (a rename costs a directory entry; an unlink frees the file's blocks, 20x slower on a
    busy disk) and deleted with it afterwards; on a store each is deleted (32 at a time: round trips)."""
    started = time.monotonic()
    for staged, final in journal["moves"]:
        if fs.get_file_info(staged).type == pafs.FileType.File:
            fs.move(staged, final)
        step("moved one")
    if isinstance(fs, pafs.LocalFileSystem):
        trash = os.path.join(journal["staging"], "inputs")
        os.makedirs(trash, exist_ok=True)
        for i, path in enumerate(journal["deletes"]):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, os.path.join(trash, f"{i}.parquet"))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda p: delete_quietly(fs, p), journal["deletes"]))
    return time.monotonic() - started


def recover_journals(fs: pafs.FileSystem, base: str) -> list[str]:
    """Finish or undo each compaction killed half-way (call under ``exclusive``). Returns what was done."""
    done = []
    for path in journals(fs, base):
        journal = read_json(fs, path)
        if journal is None:
            delete_quietly(fs, path)
            continue
        if journal["phase"] == PHASE_PUBLISH:
            publish(fs, journal)
            done.append(f"rolled forward compaction {journal['gen']}")
        else:
            done.append(f"rolled back compaction {journal['gen']}")
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_dir(journal["staging"])
        delete_quietly(fs, path)
    return done


@contextlib.contextmanager
def run_lease(out: str, what: str = "label run", *, on_wait: Callable[[str], None] = print) -> Iterator[Held]:
    """Held while a run (or prune) may write per-video files to ``out``: compaction refuses while a live one
    exists. Written first, then the lock is read: a compaction that started before us is waited for (it did
    not see our lease), and one killed half-way is rolled forward or back (under the lock) before we write
    anything: its roll-forward deletes its inputs, which must not be files we rewrote meanwhile."""
    from emoframe.workers.output.storage import filesystem_for

    fs, base = filesystem_for(out)
    rec = _record("run", what)
    held = Held(fs, f"{state_path(base, LEASES)}/{rec['id']}.json", rec)
    held.write()
    held.start_heartbeat()
    try:
        told = False
        while compacting := [r for r in live_records(fs, state_path(base, LOCK)) if r["kind"] == COMPACT]:
            if not told:
                on_wait(f"waiting for the compaction of {out} to finish ({_describe(compacting[0])})")
                told = True
            time.sleep(1.0)
        if journals(fs, base):
            with exclusive(fs, base, RECOVER, what, on_wait=on_wait):
                for line in recover_journals(fs, base):
                    on_wait(line)
        yield held
    finally:
        held.release()
