"""The rows of one video in the output, wherever they are: its own files (``<video_key>.parquet``, written by the
pipeline) or a compacted file of its partition (``compacted.<gen>.<n>.parquet``, written by flows/archive/compact.py,
sorted by source_uri). Everything that reads one video's rows back or removes them goes through here.

A video's rows are in exactly one of the two places; that is what keeps readers from seeing them twice. So
before a run writes a video's own files again (a relabel), its rows leave the compacted files first
(``evict``): a compacted file is rewritten without them, under the output's lock (workers/output/state.py), videos
row first. A crash in between leaves the video without a videos row, which the ledger reads as not done: the
next run labels it (and evicts any frames rows left behind; compaction drops them too).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emoframe.workers.spec.schema import (FRAMES_SCHEMA, VIDEOS_SCHEMA, frames_path, table_folder,
                                         videos_path)
from emoframe.workers.output.state import EVICT, exclusive, journals, recover_journals

TABLES = ("frames", "videos")
SCHEMAS = {"frames": FRAMES_SCHEMA, "videos": VIDEOS_SCHEMA}
COMPACTED_PREFIX = "compacted."
# A video's own file is "<slug>-<16 hex>.parquet" with no dot in its stem (emoframe.workers.spec.schema.video_key);
# a compacted file's name has dots, so the two can never be confused.
_OWN = re.compile(r"^[A-Za-z0-9_-]+-[0-9a-f]{16}\.parquet$")
_COMPACTED = re.compile(r"^compacted\.[0-9A-Za-z-]+\.\d{4}\.parquet$")


def own_path(base: str, table: str, model_version: str, uri: str) -> str:
    return (frames_path if table == "frames" else videos_path)(base, model_version, uri)


def is_own(name: str) -> bool:
    return bool(_OWN.match(name))


def is_compacted(name: str) -> bool:
    return bool(_COMPACTED.match(name))


def partition_files(fs: pafs.FileSystem, base: str, table: str, model_version: str) -> tuple[list[str], list[str]]:
    """(own files, compacted files) of a table's partition; other names (temporaries, hidden) are not listed."""
    infos = fs.get_file_info(pafs.FileSelector(table_folder(base, table, model_version), allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    return (sorted(i.path for i in files if is_own(i.base_name)),
            sorted(i.path for i in files if is_compacted(i.base_name)))


def _uri_column_stats(pf: pq.ParquetFile) -> list[tuple[str | None, str | None]]:
    """(min, max) source_uri of each row group; (None, None) where the writer kept no statistics."""
    idx = pf.schema_arrow.get_field_index("source_uri")
    out = []
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(idx).statistics
        out.append((st.min, st.max) if st is not None and st.has_min_max else (None, None))
    return out


def _groups_holding(pf: pq.ParquetFile, uris: set[str]) -> list[int]:
    """Row groups whose source_uri range holds one of ``uris`` (then read to be sure)."""
    hits = []
    for i, (lo, hi) in enumerate(_uri_column_stats(pf)):
        if lo is None or any(lo <= u <= cast(str, hi) for u in uris):  # lo and hi are None together
            col = pf.read_row_group(i, columns=["source_uri"]).column(0)
            if pc.any(pc.is_in(col, pa.array(sorted(uris), pa.string()))).as_py():
                hits.append(i)
    return hits


def read_rows(fs: pafs.FileSystem, base: str, model_version: str, uri: str, table: str) -> pa.Table | None:
    """The ``table`` rows of ``uri``: its own file when there is one, else its rows in the compacted files;
    None when it has none."""
    schema = SCHEMAS[table]
    try:
        with fs.open_input_file(own_path(base, table, model_version, uri)) as f:
            return pq.read_table(f, schema=schema)
    except FileNotFoundError:
        pass
    parts = []
    for path in partition_files(fs, base, table, model_version)[1]:
        try:
            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                for i in _groups_holding(pf, {uri}):
                    rg = pf.read_row_group(i).cast(schema)
                    parts.append(rg.filter(pc.equal(rg["source_uri"], uri)))
        except FileNotFoundError:
            continue  # replaced meanwhile by an eviction: the video is not in the new one (or is in another)
    return pa.concat_tables(parts) if parts else None


def compacted_holding(fs: pafs.FileSystem, base: str, model_version: str, uris: Iterable[str],
                      tables: Iterable[str] = ("videos", "frames")) -> list[str]:
    """The compacted files (of ``tables``) holding a row of one of ``uris``."""
    wanted = set(uris)
    found: list[str] = []
    if not wanted:
        return found
    for table in tables:
        for path in partition_files(fs, base, table, model_version)[1]:
            try:
                with fs.open_input_file(path) as f:
                    if _groups_holding(pq.ParquetFile(f), wanted):
                        found.append(path)
            except FileNotFoundError:
                continue
    return found


def _rewrite_without(fs: pafs.FileSystem, path: str, uris: set[str], schema: pa.Schema) -> int:
    """Replace the compacted file at ``path`` by itself less the rows of ``uris`` (streamed a row group at a
    time; deleted when nothing is left). Returns the rows removed."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        if not _groups_holding(pf, uris):
            return 0
        drop = pa.array(sorted(uris), pa.string())
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        removed = kept = 0
        try:
            with fs.open_output_stream(tmp) as out, pq.ParquetWriter(out, schema, compression="zstd") as w:
                for i in range(pf.metadata.num_row_groups):
                    rg = pf.read_row_group(i).cast(schema)
                    keep = rg.filter(pc.invert(pc.is_in(rg["source_uri"], drop)))
                    removed += rg.num_rows - keep.num_rows
                    kept += keep.num_rows
                    if keep.num_rows:
                        w.write_table(keep, row_group_size=max(keep.num_rows, 1))
            if kept:
                fs.move(tmp, path)  # atomic replace locally; a copy over the name (atomic per object) on a store
            else:
                fs.delete_file(path)
        finally:
            try:
                fs.delete_file(tmp)
            except (FileNotFoundError, OSError):
                pass
    return removed


def evict(fs: pafs.FileSystem, base: str, model_version: str, uris: Iterable[str],
          tables: tuple[str, ...] = ("videos", "frames"), on_wait: Callable[[str], None] | None = None) -> int:
    """Take the rows of ``uris`` out of the compacted files of ``tables`` (videos first: the record of done goes
    first). Their own files are left alone. Returns the rows removed. Cheap when none is there: a listing
    and the footers of the few compacted files, no lock."""
    wanted = set(uris)
    if not wanted or not compacted_holding(fs, base, model_version, wanted, tables):
        return 0
    removed = 0
    with exclusive(fs, base, EVICT, f"evicting {len(wanted)} videos", on_wait=on_wait):
        if journals(fs, base):  # a compaction killed half-way: finish it first, its inputs may be ours
            recover_journals(fs, base)
        for table in tables:
            for path in partition_files(fs, base, table, model_version)[1]:
                removed += _rewrite_without(fs, path, wanted, SCHEMAS[table])
    return removed


def _delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass  # never written (a failed or skipped file has no frames)


def remove_videos(fs: pafs.FileSystem, base: str, model_version: str, uris: Iterable[str]) -> None:
    """Remove every row of ``uris``: own frames files, then compacted rows, then own videos files (the record
    goes last, as it was written last, so an interrupted removal is found and finished by the next prune)."""
    uris = list(uris)
    for uri in uris:
        _delete(fs, own_path(base, "frames", model_version, uri))
    evict(fs, base, model_version, uris)
    for uri in uris:
        _delete(fs, own_path(base, "videos", model_version, uri))


def remove_frames(fs: pafs.FileSystem, base: str, model_version: str, uris: Iterable[str]) -> None:
    """A file labelled once and failed or skipped now: its old frames rows must not stand beside the new row."""
    uris = list(uris)
    for uri in uris:
        _delete(fs, own_path(base, "frames", model_version, uri))
    evict(fs, base, model_version, uris, tables=("frames",))
