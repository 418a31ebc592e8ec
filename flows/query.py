"""`emoframe query`: SQL over the output with DuckDB, with `frames` and `videos` views defined for you.

Local output is read by DuckDB itself (read_parquet). Output in a bucket is read through pyarrow datasets on
the filesystem the writers use (flows.sources.filesystem_for): DuckDB's httpfs extension is downloaded on
first use, and there is no internet here (nor on many clusters).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from flows.sources import filesystem_for
from workers.schema import FRAMES_SCHEMA, PARTITION_KEY, VIDEOS_SCHEMA

# model_version is a string everywhere: version "1" must not come back as an integer (nor "1.10" as 1.1).
PARTITION_FIELD = pa.field(PARTITION_KEY, pa.string())
TABLES = {"frames": FRAMES_SCHEMA.append(PARTITION_FIELD), "videos": VIDEOS_SCHEMA.append(PARTITION_FIELD)}


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
            rel.write_parquet(output)
            return f"wrote {output}"
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    with (open(output, "wb") if output else contextlib.nullcontext(dest)) as f:
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
