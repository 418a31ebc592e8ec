"""Videos rows the flow writes itself: tasks that never came back, and files seen but not labelled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from emoframe.flows.archive.ledger import Ledger
from emoframe.flows.archive.sources import skip_code
from emoframe.workers.spec.errors import Reason, ServiceUnavailableError, StorageUnavailableError
from emoframe.workers.spec.schema import STATUS_FAILED, STATUS_LABELLED, STATUS_SKIPPED, videos_path
from emoframe.workers.output.rows import evict, read_rows, remove_frames
from emoframe.workers.output.sink import video_row, videos_table, write_atomic
from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.task.video_job import LabelConfig, Source, VideoOutcome

WRITE_THREADS = 16  # small files; on an object store each write is a round trip


def failed_outcome(source: Source, cfg: LabelConfig, exc: BaseException) -> VideoOutcome:
    """The row of a video whose task kept failing outside the file, after Prefect's retries of an error and
    Ray's of a dead worker (Triton down, workers killed): a transient reason, so the next run tries it
    again. The message keeps the real last error."""
    reason = (Reason.STORAGE_UNAVAILABLE if isinstance(exc, StorageUnavailableError) else
              Reason.TRITON_UNAVAILABLE if isinstance(exc, ServiceUnavailableError) else Reason.INTERNAL_ERROR)
    row = video_row(source.uri, status=STATUS_FAILED, model_name=cfg.model_name, run_id=cfg.run_id,
                    started_at=datetime.now(timezone.utc), size_bytes=source.size_bytes, source_mtime=source.mtime,
                    content_hash=source.content_hash, error_reason=reason,
                    error_message=f"the task did not finish after its retries; retried on the next run. Last error: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}")
    fs, base = filesystem_for(cfg.out)
    write_atomic(videos_table([row]), fs, videos_path(base, cfg.model_version, source.uri))
    return VideoOutcome(row)


def already_labelled(source: Source, cfg: LabelConfig) -> VideoOutcome | None:
    """A video of a task that never came back, but whose labelling finished before its worker died (it was in a
    bundle): its labelled row from this run, which a failed row must not replace. Class counts are not in the
    row; the summary counts it without them."""
    fs, base = filesystem_for(cfg.out)
    try:
        table = read_rows(fs, base, cfg.model_version, source.uri, "videos")
    except OSError:
        return None
    rows = table.to_pylist() if table is not None else []
    done = [r for r in rows if r["run_id"] == cfg.run_id and r["status"] == STATUS_LABELLED]
    return VideoOutcome(done[-1]) if done else None


def record_skipped(skipped: dict[str, str], ledger: Ledger, out: str, model_version: str, model_name: str,
                   run_id: str) -> None:
    """A "skipped" row per file seen and not labelled, so the videos table accounts for every file. A row
    already there for the same reason is left alone (no rewrite per run); a file labelled before and
    skipped now (replaced by something that is not a video) loses its stale frames."""
    fs, base = filesystem_for(out)
    now = datetime.now(timezone.utc)

    def unchanged(uri: str, why: str) -> bool:
        old = ledger.get(uri)
        return (old is not None and old["status"] == STATUS_SKIPPED
                and old["error_reason"] == why.partition(":")[0].strip())

    todo = {uri: why for uri, why in skipped.items() if not unchanged(uri, why)}
    # An earlier row that lives in a compacted file leaves it before the new row lands (workers/output/rows.py).
    evict(fs, base, model_version, todo)

    def write(item: tuple[str, str]) -> None:
        uri, why = item
        row = video_row(uri, status=STATUS_SKIPPED, model_name=model_name, run_id=run_id, started_at=now,
                        error_reason=skip_code(why), error_message=why.partition(":")[2].strip() or None)
        write_atomic(videos_table([row]), fs, videos_path(base, model_version, uri))

    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        list(pool.map(write, todo.items()))
    was_labelled = [u for u in todo if (ledger.get(u) or {}).get("status") == STATUS_LABELLED]
    remove_frames(fs, base, model_version, was_labelled)
