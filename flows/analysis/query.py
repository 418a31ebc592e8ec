"""`emoframe query`: SQL over the output with DuckDB, with `frames`, `videos` and `summary` views defined for you.

Local output is read by DuckDB itself (read_parquet). Output in a bucket is read through pyarrow datasets on
the filesystem the writers use (workers/output/storage.filesystem_for): DuckDB's httpfs extension is downloaded on
first use, and there is no internet here (nor on many clusters).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import BinaryIO, cast

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.spec.contract import CLASSES
from emoframe.workers.spec.schema import FRAMES_SCHEMA, PARTITION_KEY, VIDEOS_SCHEMA

# model_version is a string everywhere: version "1" must not come back as an integer (nor "1.10" as 1.1).
PARTITION_FIELD = pa.field(PARTITION_KEY, pa.string())
TABLES = {"frames": FRAMES_SCHEMA.append(PARTITION_FIELD), "videos": VIDEOS_SCHEMA.append(PARTITION_FIELD)}


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def summary_column(kind: str, label: str) -> str:
    """``seconds_happiness``, ``share_happiness``: the summary's per-class columns, named like prob_*."""
    return f"{kind}_{label.lower()}"


# One row per labelled video and model version: what an analyst asks first, from the frames rows.
# A frame lasts until the next frame's presentation time (the last one 1/fps): exact for variable frame
# rate. Class seconds add up each labelled row's frame: face-seconds, so a clip with two happy faces for
# 10 s has 20 s of Happiness. A frame is "no signal" when none of its rows has a label (no face, and no
# audio that the model heard).
_SECONDS = [summary_column("seconds", c) for c in CLASSES]
_SUM_SECONDS = ",\n".join(f"         sum(dur) FILTER (WHERE label = {_sql_text(c)}) AS {col}"
                           for c, col in zip(CLASSES, _SECONDS))
_PER_CLASS = ",\n".join([*(f"       coalesce(c.{col}, 0) AS {col}" for col in _SECONDS),
                          *(f"       coalesce(c.{col}, 0) / nullif(c.labelled_seconds, 0) "
                            f"AS {summary_column('share', k)}"
                            for k, col in zip(CLASSES, _SECONDS))])
SUMMARY_SQL = f"""CREATE VIEW summary AS
WITH per_frame AS (
  SELECT video_id, model_version, frame_index, min(timestamp_s) AS t, bool_or(face_present) AS face,
         bool_or(audio_present) AS audio, count(label) = 0 AS no_signal
  FROM frames GROUP BY ALL),
timed AS (
  SELECT p.*, coalesce(lead(p.t) OVER (PARTITION BY p.video_id, p.model_version ORDER BY p.frame_index) - p.t,
                       1.0 / nullif(v.fps, 0)) AS dur
  FROM per_frame p JOIN videos v USING (video_id, model_version) WHERE v.status = 'labelled'),
per_video AS (
  SELECT video_id, model_version, count(*) AS frames, avg(face::INT) AS face_share, avg(audio::INT) AS audio_share,
         count(*) FILTER (WHERE no_signal) AS no_signal_frames
  FROM timed GROUP BY ALL),
labelled_rows AS (
  SELECT f.video_id, f.model_version, f.label, t.dur
  FROM frames f JOIN timed t USING (video_id, model_version, frame_index) WHERE f.label IS NOT NULL),
classes AS (
  SELECT video_id, model_version, sum(dur) AS labelled_seconds,
{_SUM_SECONDS}
  FROM labelled_rows GROUP BY ALL),
dominant AS (
  SELECT video_id, model_version, arg_max(label, s) AS dominant
  FROM (SELECT video_id, model_version, label, sum(dur) AS s FROM labelled_rows GROUP BY ALL) GROUP BY ALL)
SELECT v.video_id, v.source_uri, v.model_version, v.duration_s, p.frames, v.tracks, p.face_share, p.audio_share,
       p.no_signal_frames, coalesce(c.labelled_seconds, 0) AS labelled_seconds, d.dominant,
{_PER_CLASS}
FROM videos v JOIN per_video p USING (video_id, model_version)
LEFT JOIN classes c USING (video_id, model_version) LEFT JOIN dominant d USING (video_id, model_version)
WHERE v.status = 'labelled'"""


def _local_has_parquet(folder: str) -> bool:
    return next(glob.iglob(os.path.join(glob.escape(folder), "*", "*.parquet")), None) is not None


def _bucket_dataset(fs: pafs.FileSystem, folder: str, schema: pa.Schema) -> ds.Dataset | None:
    """The table's dataset, or None when nothing was written there yet. The schema is the one the writers
    use, so no file footer has to be fetched to unify schemas."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return None
    # Hidden temporary files of writes in progress are left out by ds.dataset's default ignore_prefixes.
    dataset = ds.dataset(folder, filesystem=fs, format="parquet", schema=schema,
                         partitioning=ds.partitioning(pa.schema([PARTITION_FIELD]), flavor="hive"))
    return dataset if dataset.files else None


def connect(out: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views `frames` and `videos` over the Hive-partitioned Parquet in ``out``
    (a folder, s3://bucket/prefix or gs://bucket/prefix). A table with no file yet (every video failed, say)
    is an empty view; an output with neither table is an error that says so."""
    fs, base = filesystem_for(out)
    local = isinstance(fs, pafs.LocalFileSystem)
    con = duckdb.connect()
    empty: list[str] = []
    for table, schema in TABLES.items():
        folder = f"{base}/{table}"
        if local and _local_has_parquet(folder):
            pattern = f"{folder}/*/*.parquet".replace("'", "''")
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
                        "hive_types_autocast = false, union_by_name = true)")
            continue
        dataset = None if local else _bucket_dataset(fs, folder, schema)
        if dataset is None:
            empty.append(table)
        con.register(table, dataset if dataset is not None else schema.empty_table())
    if len(empty) == len(TABLES):
        con.close()
        raise FileNotFoundError(f"no emoframe output in {out}: no Parquet under {out.rstrip('/')}/frames/ or "
                                f"{out.rstrip('/')}/videos/ (write some with `emoframe label ... --out {out}`)")
    con.execute(SUMMARY_SQL)
    return con


FORMATS = ("table", "csv", "json", "parquet")


class QueryError(Exception):
    """The SQL or the output location is the user's to fix; the message says how."""


def run_query(sql: str, out: str, *, fmt: str = "table", max_rows: int = 200, dest: BinaryIO | None = None,
              output: str | None = None) -> str:
    """Run ``sql`` over the output in ``out``. ``table``: returns text with every column, at most ``max_rows``
    rows (0 = all) and a note when rows were left out. ``csv`` / ``json`` (one object per line): every row,
    written to ``output`` or ``dest``; ``parquet`` needs ``output``. Returns what to print."""
    if fmt not in FORMATS:
        raise QueryError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "parquet" and not output:
        raise QueryError("--format parquet writes a file: give --output FILE.parquet")
    try:
        con = connect(out)
    except FileNotFoundError as exc:
        raise QueryError(str(exc)) from None
    try:
        rel = con.sql(sql)
        if rel is None:
            return "ok"
        if fmt == "table":
            shown = rel if not max_rows else rel.limit(max_rows + 1)
            table = shown.to_arrow_table()
            more = bool(max_rows) and table.num_rows > max_rows
            text = _text_table(table.slice(0, max_rows) if more else table)
            return text + (f"\n(first {max_rows} rows shown: --max-rows 0 shows all, --format csv|json|parquet "
                           "writes all)" if more else "")
        if fmt == "parquet":
            rel.write_parquet(cast(str, output))  # parquet without --output was refused above
            return f"wrote {output}"
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    # Without output the caller gives dest (the CLI: stdout); the signature cannot say "one of the two".
    with (open(output, "wb") if output else contextlib.nullcontext(cast(BinaryIO, dest))) as f:
        if fmt == "csv":
            pa_csv.write_csv(table, f)
        else:
            for row in table.to_pylist():
                f.write((json.dumps(row, default=str, ensure_ascii=False) + "\n").encode())
    return f"wrote {table.num_rows} rows to {output}" if output else ""


def _text_table(table: pa.Table) -> str:
    """Every column, each as wide as its widest value (up to 60 characters)."""
    names = table.column_names
    cols = [[_cell(v) for v in table.column(n).to_pylist()] for n in names]
    widths = [min(60, max([len(n), *map(len, c)])) for n, c in zip(names, cols)]
    line = lambda cells: " | ".join(c[:w].ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    rows = [line(names), "-+-".join("-" * w for w in widths)]
    rows += [line([c[i] for c in cols]) for i in range(table.num_rows)]
    rows.append(f"({table.num_rows} rows, {len(names)} columns)")
    return "\n".join(rows)


def _cell(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
