"""Files that moved, were renamed or copied: their labels are reused, not computed again, and the output
of a source that is gone is removed (`emoframe prune`, and a move found by a run)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from emoframe.workers.output.rows import read_rows, remove_videos
from emoframe.workers.spec.schema import PARTITION_KEY, VIDEOS_SCHEMA, frames_path, partition, video_id, videos_path
from emoframe.workers.output.sink import videos_table, write_atomic
from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.output.state import run_lease
from emoframe.workers.output.storage import content_fingerprint, source_exists
from emoframe.workers.task.video_job import Source

FINGERPRINT_THREADS = 16  # two ranged reads per object: round trips, not work


def _with_source(table: pa.Table, uri: str) -> pa.Table:
    n = table.num_rows
    for name, value in (("video_id", video_id(uri)), ("source_uri", uri)):
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                                 pa.array([value] * n, pa.string()))
    return table


def fingerprinted(sources: list[Source]) -> list[Source]:
    """``sources`` with their content fingerprints (None where a file cannot be read: its task reports why)."""

    def one(s: Source) -> Source:
        try:
            return replace(s, content_hash=content_fingerprint(s.uri, s.size_bytes))
        except (OSError, ValueError):
            return s

    with ThreadPoolExecutor(max_workers=FINGERPRINT_THREADS) as pool:
        return list(pool.map(one, sources))


def adopt_labels(out: str, model_version: str, old: dict, source: Source, run_id: str,
                 remove_later: list[str] | None = None) -> bool | None:
    """Give ``source`` the labels of ``old`` (a labelled videos row of the same content under another name):
    its frames copied under the new name, and a videos row of its own. When the old name no longer exists
    the file moved: the old output is removed, after the new one is written (or its URI appended to
    ``remove_later``, for one ``remove_moved`` of them all: a compacted file is then rewritten once, not once
    per move). Returns whether it moved, or None when the old output is gone meanwhile (a concurrent run, a
    prune): then the file is labelled."""
    fs, base = filesystem_for(out)
    old_uri = old["source_uri"]
    frames = read_rows(fs, base, model_version, old_uri, "frames")  # its own file or a compacted one
    videos = read_rows(fs, base, model_version, old_uri, "videos")
    if frames is None or videos is None or not videos.num_rows:
        return None
    old_row = videos.to_pylist()[0]
    now = datetime.now(timezone.utc)
    row = {**old_row, "video_id": video_id(source.uri), "source_uri": source.uri, "size_bytes": source.size_bytes,
           "source_mtime": source.mtime, "content_hash": source.content_hash, "run_id": run_id,
           "processing_s": 0.0, "started_at": now, "finished_at": now}
    # The frames keep the run_id that computed them: that run is where the labels came from.
    write_atomic(_with_source(frames, source.uri), fs, frames_path(base, model_version, source.uri))
    write_atomic(videos_table([row]), fs, videos_path(base, model_version, source.uri))
    moved = not source_exists(old_uri)
    if moved and remove_later is not None:
        remove_later.append(old_uri)
    elif moved:
        remove_videos(fs, base, model_version, [old_uri])
    return moved


def remove_moved(out: str, model_version: str, old_uris: list[str]) -> None:
    """The output of files that moved (``adopt_labels(..., remove_later=...)``), removed in one go."""
    fs, base = filesystem_for(out)
    remove_videos(fs, base, model_version, old_uris)


@dataclass(frozen=True)
class Gone:
    model_version: str
    source_uri: str
    status: str


def find_gone(out: str) -> list[Gone]:
    """Every videos row, in any model version, whose source no longer exists."""
    fs, base = filesystem_for(out)
    root = f"{base.rstrip('/')}/videos"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{out} holds no emoframe output (no videos table)")
    key = pa.field(PARTITION_KEY, pa.string())  # "1.10" stays a string
    table = ds.dataset(root, filesystem=fs, format="parquet", schema=VIDEOS_SCHEMA.append(key),
                       partitioning=ds.partitioning(pa.schema([key]), flavor="hive")).to_table(
        columns=[PARTITION_KEY, "source_uri", "status"])
    return [Gone(r[PARTITION_KEY], r["source_uri"], r["status"]) for r in table.to_pylist()
            if not source_exists(r["source_uri"])]


def prune(out: str, gone: list[Gone]) -> None:
    """Remove the output (frames rows, then videos row) of each source in ``gone``. Holds a run lease: a
    compaction must not merge files this is deleting."""
    fs, base = filesystem_for(out)
    by_version: dict[str, list[str]] = {}
    for g in gone:
        partition(g.model_version)  # refuses a value that is not a safe path segment
        by_version.setdefault(g.model_version, []).append(g.source_uri)
    with run_lease(out, "prune"):
        for version, uris in sorted(by_version.items()):
            remove_videos(fs, base, version, uris)
