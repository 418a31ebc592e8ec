"""Small files share a task while every task slot is taken (flows/run/label_archive.py InFlight, the
thresholds in workers/task/resources.py), and a bundle's task retries only what it has not finished.

Unit tests of the flow's bookkeeping: Prefect's task is replaced by a stand-in whose futures finish on a
timer thread (tests/test_pipeline.py and the fault tests run the real one on Ray)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from emoframe.flows.run import label_archive
from emoframe.flows.run.run_summary import RunSummary
from emoframe.workers.spec.policy import POLICY
from emoframe.workers.task.resources import BUNDLE_MAX_BYTES, BUNDLE_MAX_VIDEOS
from emoframe.workers.task.video_job import LabelConfig, Source, VideoOutcome

CFG = LabelConfig(out="/nowhere", run_id="r1", triton_url="", model_version="3")


@pytest.fixture(autouse=True)
def quiet_flow_logger(monkeypatch):
    """The window's progress lines go to a logger of this test's own: an earlier test's in-process flow run
    leaves Prefect's handlers on the emoframe logger, bound to a stream pytest has closed since."""
    quiet = logging.getLogger("tests.test_bundles")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    monkeypatch.setattr(label_archive, "logger", quiet)


class _Future:
    def __init__(self, result):
        self._result = result
        self._callbacks: list = []
        self._done = False
        self._lock = threading.Lock()

    def finish(self) -> None:
        with self._lock:
            self._done = True
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb) -> None:
        with self._lock:
            if not self._done:
                self._callbacks.append(cb)
                return
        cb(self)

    def result(self, raise_on_failure: bool = True):
        return self._result


class _Tasks:
    """label_videos.submit: records each task's sources; each finishes ``seconds`` after it was submitted,
    one slot at a time per ``slots`` (as Ray would run them)."""

    def __init__(self, seconds: float, slots: int):
        self.seconds = seconds
        self.sent: list[list[Source]] = []
        self.running = threading.Semaphore(slots)

    def submit(self, sources: list[Source], cfg: LabelConfig) -> _Future:
        self.sent.append(list(sources))
        outcomes = [VideoOutcome({"status": "labelled", "source_uri": s.uri}) for s in sources]
        fut = _Future(outcomes)

        def run() -> None:
            with self.running:
                time.sleep(self.seconds)
            fut.finish()

        threading.Thread(target=run, daemon=True).start()
        return fut


def _window(monkeypatch, seconds: float, limit: int, slots: int) -> tuple[label_archive.InFlight, _Tasks]:
    tasks = _Tasks(seconds, slots)
    monkeypatch.setattr(label_archive, "label_videos", tasks)
    summary = RunSummary("r1", "/nowhere", "3", POLICY)
    return label_archive.InFlight(CFG, summary, limit), tasks


def test_with_a_slot_free_every_video_goes_at_once_alone(monkeypatch):
    window, tasks = _window(monkeypatch, seconds=0.0, limit=4, slots=4)
    for i in range(10):
        window.submit(Source(f"/v/{i}.mp4", 1000))
        time.sleep(0.02)  # each finishes before the next is listed
    window.drain()
    assert [len(b) for b in tasks.sent] == [1] * 10
    assert window.done == 10


def test_while_every_slot_is_taken_small_files_wait_together_and_large_ones_go_alone(monkeypatch):
    window, tasks = _window(monkeypatch, seconds=0.1, limit=2, slots=2)
    small = [Source(f"/v/{i:03d}.mp4", 200_000) for i in range(100)]
    big = Source("/v/big.mp4", BUNDLE_MAX_BYTES)
    unknown = Source("s3://b/unknown.mp4", None)
    for s in small[:50] + [big] + small[50:] + [unknown]:
        window.submit(s)
    window.drain()
    sent = [s.uri for b in tasks.sent for s in b]
    assert sorted(sent) == sorted(s.uri for s in [*small, big, unknown])  # each exactly once
    assert [big] in tasks.sent and [unknown] in tasks.sent  # alone
    bundles = [b for b in tasks.sent if len(b) > 1]
    assert bundles, [len(b) for b in tasks.sent]  # tasks were slow: small files waited together
    assert all(len(b) <= BUNDLE_MAX_VIDEOS and sum(s.size_bytes for s in b) < BUNDLE_MAX_BYTES for b in bundles)
    assert max(len(b) for b in bundles) == BUNDLE_MAX_VIDEOS
    assert len(tasks.sent) <= 100 / BUNDLE_MAX_VIDEOS + 8  # far fewer tasks than videos
    assert window.done == 102 and window.summary.counts()["labelled"] == 102


def test_bundles_stay_under_the_byte_limit(monkeypatch):
    window, tasks = _window(monkeypatch, seconds=0.2, limit=1, slots=1)
    third = BUNDLE_MAX_BYTES // 3 + 1
    for i in range(12):
        window.submit(Source(f"/v/{i}.mp4", third))
    window.drain()
    assert all(sum(s.size_bytes for s in b) < BUNDLE_MAX_BYTES for b in tasks.sent)
    assert max(len(b) for b in tasks.sent) == 2


def test_a_retry_of_a_bundle_labels_only_what_it_had_not_finished(monkeypatch):
    """Prefect runs the task again after an error (Triton away): the videos it finished are not labelled
    again; on the last try a video that still fails gets its failed row and the rest go on."""
    from prefect.runtime import task_run

    calls: list[str] = []
    failing = {"/v/1.mp4"}

    def label_one(source: Source, cfg: LabelConfig) -> VideoOutcome:
        calls.append(source.uri)
        if source.uri in failing:
            raise ConnectionError("Triton away")
        return VideoOutcome({"status": "labelled", "source_uri": source.uri})

    failed: list[str] = []
    monkeypatch.setattr(label_archive, "label_one", label_one)
    monkeypatch.setattr(label_archive, "failed_outcome",
                        lambda s, cfg, exc: failed.append(s.uri) or VideoOutcome({"status": "failed"}))
    sources = [Source(f"/v/{i}.mp4", 10) for i in range(3)]
    monkeypatch.setattr(task_run, "run_count", 1)
    with pytest.raises(ConnectionError):
        label_archive.label_videos.fn(sources, CFG)
    assert calls == ["/v/0.mp4", "/v/1.mp4"]
    failing.clear()  # Triton back
    monkeypatch.setattr(task_run, "run_count", 2)
    outcomes = label_archive.label_videos.fn(sources, CFG)
    assert calls == ["/v/0.mp4", "/v/1.mp4", "/v/1.mp4", "/v/2.mp4"]  # 0 was not labelled again
    assert [o.row["status"] for o in outcomes] == ["labelled"] * 3
    assert not label_archive._finished  # nothing kept once the task returned

    failing.add("/v/1.mp4")  # a new run of the task, Triton away through its last try
    calls.clear()
    monkeypatch.setattr(task_run, "run_count", 1 + label_archive.PREFECT_TASK_RETRIES)
    outcomes = label_archive.label_videos.fn(sources, CFG)
    assert calls == ["/v/0.mp4", "/v/1.mp4", "/v/2.mp4"] and failed == ["/v/1.mp4"]
    assert [o.row["status"] for o in outcomes] == ["labelled", "failed", "labelled"]


def test_a_bundle_that_never_came_back_keeps_the_labelled_rows_its_worker_wrote(tmp_path, monkeypatch):
    """Ray gave up on a bundle whose worker kept dying after it had labelled some of its videos: those keep
    their labelled row (the flow writes failed rows only for the others); a row of an earlier run does not
    count."""
    from datetime import datetime, timezone

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from emoframe.workers.output.sink import video_row, videos_table, write_atomic
    from emoframe.workers.spec.schema import videos_path

    cfg = LabelConfig(out=str(tmp_path), run_id="now", triton_url="", model_version="3")
    fs, now = pafs.LocalFileSystem(), datetime.now(timezone.utc)
    for uri, run in (("/v/done.mp4", "now"), ("/v/before.mp4", "earlier")):
        row = video_row(uri, status="labelled", model_name=cfg.model_name, run_id=run, started_at=now)
        write_atomic(videos_table([row]), fs, videos_path(str(tmp_path), "3", uri))

    class Dies:
        def submit(self, sources, cfg):
            fut = _Future(RuntimeError("the worker died"))
            fut.finish()
            return fut

    monkeypatch.setattr(label_archive, "label_videos", Dies())
    window = label_archive.InFlight(cfg, RunSummary("now", str(tmp_path), "3", POLICY), limit=1)
    window._send([Source("/v/done.mp4", 1), Source("/v/before.mp4", 1), Source("/v/never.mp4", 1)])
    window.drain()
    rows = {u: pq.read_table(videos_path(str(tmp_path), "3", u)).to_pylist()[0]
            for u in ("/v/done.mp4", "/v/before.mp4", "/v/never.mp4")}
    assert {u: (r["status"], r["run_id"]) for u, r in rows.items()} == {
        "/v/done.mp4": ("labelled", "now"), "/v/before.mp4": ("failed", "now"), "/v/never.mp4": ("failed", "now")}
    assert rows["/v/never.mp4"]["error_reason"] == "internal_error"
    assert window.summary.counts()["labelled"] == 1 and window.summary.counts()["failed"] == 2
