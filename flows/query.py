"""`emoframe query`: SQL over the output with DuckDB, with `frames` and `videos` views defined for you.

Local output is read by DuckDB itself (read_parquet). Output in a bucket is read through pyarrow datasets on
the filesystem the writers use (flows.sources.filesystem_for): DuckDB's httpfs extension is downloaded on
first use, and there is no internet here (nor on many clusters).
"""

from __future__ import annotations

import glob
import os

import duckdb
import pyarrow as pa
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


def run_query(sql: str, out: str, max_rows: int = 200) -> str:
    con = connect(out)
    rel = con.sql(sql)
    if rel is None:
        return "ok"
    return str(rel.limit(max_rows)) if max_rows else str(rel)
