"""Compaction: the many small files of the frames and videos tables (one per video) merged into a few large
files per partition, sorted (frames by source_uri, frame_index, track_id; videos by source_uri), in row groups
of 100,000 rows, so DuckDB and pyarrow open a handful of footers instead of one per video and skip row
groups by source_uri. `emoframe compact OUT`, or ``compact_if_needed`` at the end of a run.

How it stays correct beside everything else that writes (README "Compaction and the state area"):
- It runs alone: it holds the output's lock (workers/output/state.py, which evictions also take) and refuses while a
  label run or prune holds a live lease. A run that starts meanwhile waits for it.
- It never overwrites or deletes a row before its copy is published. Outputs are written under
  ``_state/staging/``; a journal names outputs and inputs; then outputs are moved into the partition
  folders and inputs deleted. A compaction killed before the journal says "publish" is rolled back (staging
  deleted); after, rolled forward, by the next compaction, eviction or run
  (emoframe.workers.output.state.recover_journals).
- A video's own file wins over its compacted rows (there should never be both; if there are, the own file is
  the newer), and frames rows survive only for videos whose videos row says labelled: the frames rows an
  eviction killed half-way left behind are dropped here.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emoframe.workers.output.rows import COMPACTED_PREFIX, SCHEMAS, partition_files
from emoframe.workers.spec.schema import PARTITION_KEY, STATUS_LABELLED, table_folder, video_key
from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.output.state import (COMPACT, PHASE_PUBLISH, PHASE_STAGING, LockBusy, delete_quietly, exclusive,
                                           live_leases, publish, recover_journals, state_path, write_journal, STAGING)

ROW_GROUP_ROWS = 100_000
# Rows per output file: frames rows are ~40 bytes compressed (about 160 MB a file), videos rows ~100.
MAX_FILE_ROWS = {"frames": 4_000_000, "videos": 1_000_000}
SORT_KEYS = {"frames": "source_uri, frame_index, track_id NULLS FIRST", "videos": "source_uri"}
DEFAULT_MIN_FILES = 1000  # own files in a partition before the end of a run compacts it


@dataclass
class PartitionResult:
    model_version: str
    own_files: int = 0  # per-video files merged (both tables)
    compacted_inputs: int = 0  # earlier compacted files merged again (small, or holding stale rows)
    outputs: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table
    dropped_frames: int = 0  # frames rows of videos not (or no longer) labelled, dropped
    publish_s: float = 0.0  # how long readers could see a row twice


@dataclass
class CompactResult:
    partitions: list[PartitionResult] = field(default_factory=list)
    refused: str | None = None  # why nothing was done (a run holds a lease)
    recovered: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        if self.refused:
            return f"not compacted: {self.refused}"
        lines = list(self.recovered)
        for p in self.partitions:
            lines.append(f"model_version={p.model_version}: {p.own_files} per-video files and {p.compacted_inputs} "
                         f"earlier compacted files -> {len(p.outputs)} files ({p.rows.get('frames', 0)} frames rows, "
                         f"{p.rows.get('videos', 0)} videos rows)"
                         + (f"; dropped {p.dropped_frames} frames rows of videos not labelled" if p.dropped_frames
                            else ""))
        if not self.partitions:
            lines.append("nothing to compact")
        lines.append(f"compaction took {self.seconds:.1f} s")
        return "\n".join(lines)


class CompactionBusy(RuntimeError):
    """A label run or prune is writing to the output: compaction waits for it."""


def partitions(fs: pafs.FileSystem, base: str) -> list[str]:
    """Model versions with a folder in either table."""
    found = set()
    for table in SCHEMAS:
        infos = fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/{table}", allow_not_found=True))
        found |= {i.base_name.split("=", 1)[1] for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(f"{PARTITION_KEY}=")}
    return sorted(found)


def _uris_of(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=["source_uri"] + (["status"] if "/videos/" in path else []))


def _dataset(fs: pafs.FileSystem, paths: list[str], table: str) -> ds.Dataset:
    return ds.dataset(paths, filesystem=fs, format="parquet", schema=SCHEMAS[table])


def _connect(workdir: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"temp_directory": workdir, "memory_limit": os.environ.get(
        "EMOFRAME_COMPACT_MEMORY", "2GB"), "preserve_insertion_order": True})
    con.execute("SET TimeZone = 'UTC'")
    return con


def _source(con: duckdb.DuckDBPyConnection, name: str, fs: pafs.FileSystem, paths: list[str], table: str) -> str:
    """A FROM clause over ``paths``: DuckDB's own reader for local files (parallel, fast over thousands of
    files), a pyarrow dataset on the writers' filesystem for a bucket (DuckDB's httpfs is not installed)."""
    if isinstance(fs, pafs.LocalFileSystem):
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        # union_by_name: files of an older schema version read their missing columns as NULL.
        return f"read_parquet([{files}], union_by_name = true, hive_partitioning = false)"
    con.register(name, _dataset(fs, paths, table))
    return name


class _Plan:
    """What one partition's compaction reads, keeps and deletes."""

    def __init__(self, fs: pafs.FileSystem, base: str, mv: str, workdir: str):
        self.own_v, comp_v = partition_files(fs, base, "videos", mv)
        own_f, comp_f = partition_files(fs, base, "frames", mv)
        small = {t: MAX_FILE_ROWS[t] // 2 for t in SCHEMAS}
        # Videos: own rows win over compacted ones.
        status: dict[str, str] = {}
        if self.own_v:
            with _connect(workdir) as con:
                status = dict(con.sql(f"SELECT source_uri, status FROM {_source(con, 'v', fs, self.own_v, 'videos')}"
                                      ).fetchall())
        own_uris = self.own_v_uris = set(status)
        self.comp_v = []
        for path in comp_v:
            t = _uris_of(fs, path)
            uris = t["source_uri"].to_pylist()
            for u, s in zip(uris, t["status"].to_pylist()):
                status.setdefault(u, s)
            if t.num_rows < small["videos"] or own_uris.intersection(uris):
                self.comp_v.append(path)
        self.labelled = sorted(u for u, s in status.items() if s == STATUS_LABELLED)
        # Frames: a video's own frames file is merged when its videos row says labelled; other own frames files
        # (a task killed before its videos row, stale frames) are left where they are.
        by_name = {f"{video_key(u)}.parquet": u for u in self.labelled}
        self.own_f = [p for p in own_f if p.rsplit("/", 1)[1] in by_name]
        self.own_f_uris = sorted(by_name[p.rsplit("/", 1)[1]] for p in self.own_f)
        keep, own_set = set(self.labelled), set(self.own_f_uris)
        self.comp_f = []
        for path in comp_f:
            uris = set(_uris_of(fs, path)["source_uri"].unique().to_pylist())
            with fs.open_input_file(path) as f:
                n = pq.ParquetFile(f).metadata.num_rows
            if n < small["frames"] or uris - keep or uris & own_set:
                self.comp_f.append(path)

    @property
    def own_files(self) -> int:
        return len(self.own_v) + len(self.own_f)

    def inputs(self) -> list[str]:
        return self.own_f + self.comp_f + self.own_v + self.comp_v


def _sorted_batches(con: duckdb.DuckDBPyConnection, fs: pafs.FileSystem, plan: _Plan, table: str
                    ) -> tuple[pa.RecordBatchReader, int]:
    """The rows to write, sorted, as a stream (DuckDB sorts out of core, spilling to its temp_directory), and
    the frames rows of compacted inputs dropped (videos not labelled, or with an own file that wins)."""
    own, comp = (plan.own_f, plan.comp_f) if table == "frames" else (plan.own_v, plan.comp_v)
    parts, dropped = [], 0
    if own:
        parts.append(f"SELECT * FROM {_source(con, 'own_rows', fs, own, table)}")
    if comp:
        rows = _source(con, "comp_rows", fs, comp, table)
        if table == "frames":
            con.register("keep_uris", pa.table({"u": pa.array(plan.labelled, pa.string())}))
            con.register("own_uris", pa.table({"u": pa.array(plan.own_f_uris, pa.string())}))
            where = "source_uri IN (SELECT u FROM keep_uris) AND source_uri NOT IN (SELECT u FROM own_uris)"
            dropped = con.sql(f"SELECT count(*) FILTER (WHERE NOT ({where})) FROM {rows}").fetchall()[0][0]
        else:
            con.register("own_uris", pa.table({"u": pa.array(sorted(plan.own_v_uris), pa.string())}))
            where = "source_uri NOT IN (SELECT u FROM own_uris)"
        parts.append(f"SELECT * FROM {rows} WHERE {where}")
    sql = " UNION ALL BY NAME ".join(parts)
    return con.sql(f"SELECT * FROM ({sql}) ORDER BY {SORT_KEYS[table]}").to_arrow_reader(ROW_GROUP_ROWS), dropped


def _conform(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """The writers' schema exactly: its column order, NULL for a column no input had, its types and metadata."""
    t = pa.Table.from_batches(batches)
    cols = [t[f.name] if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, names=schema.names).cast(schema)


def _write_outputs(fs: pafs.FileSystem, reader: pa.RecordBatchReader, table: str, stage_dir: str, gen: str,
                   first: int) -> tuple[list[str], int]:
    """Write the stream into files of at most MAX_FILE_ROWS rows, row groups of ROW_GROUP_ROWS. Returns the
    staged paths and the rows written."""
    schema = SCHEMAS[table]
    paths: list[str] = []
    rows = in_file = 0
    # The open file's writer and stream: set together, None between files.
    writer: pq.ParquetWriter | None = None
    out: pa.NativeFile | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            # Rows are pending only while a file is open.
            cast(pq.ParquetWriter, writer).write_table(_conform(pending, schema), row_group_size=ROW_GROUP_ROWS)
        pending, pending_rows = [], 0

    try:
        for batch in reader:
            while batch.num_rows:
                if writer is None:
                    path = f"{stage_dir}/{COMPACTED_PREFIX}{gen}.{first + len(paths):04d}.parquet"
                    fs.create_dir(stage_dir, recursive=True)
                    out = fs.open_output_stream(path)
                    writer = pq.ParquetWriter(out, schema, compression="zstd")
                    paths.append(path)
                    in_file = 0
                take = min(batch.num_rows, MAX_FILE_ROWS[table] - in_file, ROW_GROUP_ROWS - pending_rows)
                pending.append(batch.slice(0, take))
                pending_rows += take
                in_file += take
                rows += take
                batch = batch.slice(take)
                if pending_rows == ROW_GROUP_ROWS:
                    flush()
                if in_file == MAX_FILE_ROWS[table]:
                    flush()
                    writer.close()
                    cast(pa.NativeFile, out).close()
                    writer = out = None
        if writer is not None:
            flush()
            writer.close()
            cast(pa.NativeFile, out).close()
    except BaseException:
        if out is not None:
            out.close()
        raise
    return paths, rows


def _compact_partition(fs: pafs.FileSystem, base: str, mv: str, min_files: int,
                       step: Callable[[str], None]) -> PartitionResult | None:
    with tempfile.TemporaryDirectory(prefix="emoframe-compact-") as workdir:
        plan = _Plan(fs, base, mv, workdir)
        if max(len(plan.own_v), len(plan.own_f)) < min_files or not (plan.own_files or len(plan.comp_f) > 1
                                                                      or len(plan.comp_v) > 1):
            return None
        gen = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        staging = state_path(base, STAGING, gen)
        journal: dict[str, Any] = {"gen": gen, "phase": PHASE_STAGING, "model_version": mv, "staging": staging,
                                   "moves": [], "deletes": []}
        journal_path = write_journal(fs, base, journal)
        result = PartitionResult(mv, own_files=plan.own_files, compacted_inputs=len(plan.comp_f) + len(plan.comp_v))
        for table in ("frames", "videos"):
            if not ((plan.own_f or plan.comp_f) if table == "frames" else (plan.own_v or plan.comp_v)):
                continue
            with _connect(workdir) as con:
                reader, dropped = _sorted_batches(con, fs, plan, table)
                paths, rows = _write_outputs(fs, reader, table, f"{staging}/{table}", gen, 0)
            result.rows[table] = rows
            result.dropped_frames += dropped
            journal["moves"] += [[p, f"{table_folder(base, table, mv)}/{p.rsplit('/', 1)[1]}"] for p in paths]
            step(f"staged {table}")
    journal["deletes"] = plan.inputs()
    journal["phase"] = PHASE_PUBLISH
    write_journal(fs, base, journal)  # from here on, a killed compaction is rolled forward
    step("journal publish")
    result.publish_s = publish(fs, journal, step)
    result.outputs = [final for _, final in journal["moves"]]
    if fs.get_file_info(staging).type == pafs.FileType.Directory:
        fs.delete_dir(staging)
    delete_quietly(fs, journal_path)
    return result


def compact(out: str, *, model_versions: list[str] | None = None, min_files: int = 1,
            ignore_leases: frozenset[str] = frozenset(), wait_s: float = 30.0,
            step: Callable[[str], None] = lambda name: None) -> CompactResult:
    """Compact every partition (or ``model_versions``) holding at least ``min_files`` per-video files. Refuses
    (``refused`` set, nothing changed) while a label run or prune holds a live lease on ``out``, other than
    ``ignore_leases``. ``step`` is called after each step (a test seam: raise there to kill it half-way)."""
    started = time.monotonic()
    fs, base = filesystem_for(out)
    result = CompactResult()
    try:
        with exclusive(fs, base, COMPACT, f"compacting {out}", timeout_s=wait_s):
            runs = live_leases(fs, base, ignore_leases)
            if runs:
                r = runs[0]
                result.refused = (f"{len(runs)} label run(s) or prune(s) are writing to {out} (the first: pid "
                                  f"{r['pid']} on {r['host']}); compaction waits for them: run it again after")
                return result
            result.recovered = recover_journals(fs, base)
            for mv in model_versions or partitions(fs, base):
                part = _compact_partition(fs, base, mv, min_files, step)
                if part is not None:
                    result.partitions.append(part)
    except LockBusy as exc:
        result.refused = str(exc)
    result.seconds = time.monotonic() - started
    return result


def compact_if_needed(out: str, model_version: str, min_files: int = DEFAULT_MIN_FILES) -> CompactResult | None:
    """The end of a run: compact ``model_version`` when it holds ``min_files`` per-video files or more. Another
    run still writing, or a storage error, leaves it for a later time (said in ``refused``); never raises."""
    fs, base = filesystem_for(out)
    try:
        own_v, _ = partition_files(fs, base, "videos", model_version)
        if len(own_v) < min_files:
            return None
        return compact(out, model_versions=[model_version], min_files=min_files, wait_s=5.0)
    except (OSError, duckdb.Error, pa.ArrowException) as exc:
        # The run's labels are on disk either way; a compaction cut short is finished or undone by the next one.
        return CompactResult(refused=f"compaction failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                                     f"the output is intact: `emoframe compact {out}` tries again")
