"""The node's shared copy of a remote video (workers/output/download_cache.py), against the real S3 server
(SeaweedFS) through a counting proxy, with real processes: started at once they download the object once and
share it; a download killed half-way is never used; the last user out removes the copy; what a killed process
held is swept."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from emoframe.workers.output import download_cache
from emoframe.workers.spec.errors import BadInputError
from tests.s3_proxy import CountingProxy

pytestmark = pytest.mark.integration

SIZE = 24 * 1024 * 1024 + 123  # several reads of CHUNK_BYTES, not a multiple of it


@pytest.fixture(scope="module")
def video(s3_server) -> tuple[str, str, bytes]:
    """(URI, its key as the proxy sees it, its content): random bytes are enough, nothing decodes them here."""
    data = os.urandom(SIZE)
    key = "cache/a long video.mp4"
    with s3_server.filesystem().open_output_stream(f"{s3_server.bucket}/{key}") as f:
        f.write(data)
    return s3_server.uri(key), f"{s3_server.bucket}/{key}", data


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """Every S3 request of this process and the processes it starts goes through a counting proxy."""
    p = CountingProxy(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.close()


def downloads(proxy: CountingProxy, key: str) -> float:
    """Whole copies of the object its GETs returned."""
    return proxy.body_bytes[key] / SIZE


def kinds(root: Path) -> list[str]:
    """What the cache folder holds, by kind: lock, lease, linger, part, copy."""
    return sorted(p.name.split(".", 1)[1].split("-")[0].split(".")[0] for p in root.iterdir())


def _share(uri: str, root: str, start, out: str) -> None:
    """A process that needs the copy: waits for the others, reads the copy, keeps it a moment."""
    start.wait()
    with download_cache.local_copy(uri, SIZE, "v1", root=Path(root)) as path:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        time.sleep(0.5)
    Path(out).write_text(f"{path}\n{digest}")


def _die_half_way(uri: str, root: str) -> None:
    """A downloader SIGKILLed half-way through the object (the OOM killer, a cancelled task)."""
    def killed(uri: str, dest: Path, tick) -> None:
        dest.write_bytes(b"\0" * (SIZE // 2))
        os.kill(os.getpid(), signal.SIGKILL)

    download_cache._download = killed
    with download_cache.local_copy(uri, SIZE, "v1", root=Path(root)):
        pass


def _die_holding(uri: str, root: str) -> None:
    """A user SIGKILLed while it holds the complete copy: no handler runs, the copy stays behind."""
    with download_cache.local_copy(uri, SIZE, "v1", root=Path(root)):
        os.kill(os.getpid(), signal.SIGKILL)


def _run(target, *args) -> int | None:
    p = mp.get_context("spawn").Process(target=target, args=args)
    p.start()
    p.join(120)
    return p.exitcode


def test_processes_at_once_wait_for_one_download_and_share_it(video, proxy, tmp_path):
    uri, key, data = video
    root = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_share, args=(uri, str(root), start, str(tmp_path / f"out{i}"))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * 4
    seen = {(tmp_path / f"out{i}").read_text() for i in range(4)}
    assert len(seen) == 1  # one path, one content
    path, digest = seen.pop().split("\n")
    assert digest == hashlib.sha256(data).hexdigest()
    assert downloads(proxy, key) == 1, proxy.body_bytes
    assert not Path(path).exists() and list(root.iterdir()) == []  # the last one out removed it


def test_a_download_killed_half_way_is_never_used(video, proxy, tmp_path):
    uri, key, data = video
    root = tmp_path / "cache"
    assert _run(_die_half_way, uri, str(root)) == -signal.SIGKILL
    assert kinds(root) == ["lease", "lock", "part"]  # its lease and half a file, no copy
    with download_cache.local_copy(uri, SIZE, "v1", root=root) as path:
        assert Path(path).read_bytes() == data
        assert kinds(root) == ["copy", "lease", "lock"]  # the dead one's lease and part are gone
    assert downloads(proxy, key) == 1
    assert list(root.iterdir()) == []


def test_a_hold_keeps_the_copy_for_the_next_user_and_the_last_user_removes_it(video, proxy, tmp_path):
    uri, key, data = video
    root = tmp_path / "cache"
    with download_cache.hold(uri, SIZE, "v1", root=root):
        for _ in range(3):  # one after another, as a video task's probe, segments and retries
            with download_cache.local_copy(uri, SIZE, "v1", root=root) as path:
                assert Path(path).stat().st_size == SIZE
        assert Path(path).exists()
    assert not Path(path).exists() and list(root.iterdir()) == []
    assert downloads(proxy, key) == 1
    with download_cache.local_copy(uri, SIZE, "v2", root=root) as other:  # the object changed: a new copy
        assert other != path
    assert downloads(proxy, key) == 2


def test_a_lingering_hold_lasts_until_let_go_or_its_deadline(video, proxy, tmp_path):
    uri, key, data = video
    root = tmp_path / "cache"
    with download_cache.hold(uri, SIZE, "v1", linger_s=600, root=root):
        with download_cache.local_copy(uri, SIZE, "v1", root=root) as path:
            pass
    assert Path(path).exists()  # for the next wave on this node
    download_cache.let_go(uri, SIZE, "v1", root=root)
    assert list(root.iterdir()) == []
    with download_cache.hold(uri, SIZE, "v1", linger_s=0.5, root=root):
        with download_cache.local_copy(uri, SIZE, "v1", root=root) as path:
            pass
    assert download_cache.sweep(root) == [] and Path(path).exists()
    time.sleep(2.0)
    assert len(download_cache.sweep(root)) == 1 and list(root.iterdir()) == []


def test_a_copy_held_only_by_a_dead_process_is_swept_and_a_live_one_is_not(video, proxy, tmp_path):
    uri, key, data = video
    root = tmp_path / "cache"
    assert _run(_die_holding, uri, str(root)) == -signal.SIGKILL
    copy = [p for p in root.iterdir() if ".copy" in p.name]
    assert len(copy) == 1 and copy[0].stat().st_size == SIZE  # left behind by the killed process
    with download_cache.hold("s3://elsewhere/live.mp4", 1, "v", root=root):  # held by this live process
        removed = download_cache.sweep(root)
        assert removed == [download_cache.entry_key(uri, SIZE, "v1")]
        assert kinds(root) == ["lease", "lock"]  # the live hold's
    assert list(root.iterdir()) == []


def test_a_missing_object_is_not_found_and_leaves_nothing(s3_server, tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(BadInputError) as err:
        with download_cache.local_copy(s3_server.uri("cache/no such.mp4"), 10, "v", root=root):
            pass
    assert err.value.reason == "not_found"
    assert list(root.iterdir()) == []


def test_a_local_source_is_used_in_place(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    root = tmp_path / "cache"
    with download_cache.hold(str(clip), root=root), download_cache.local_copy(f"file://{clip}", root=root) as path:
        assert path == str(clip)
    assert not root.exists()
