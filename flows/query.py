"""`emoframe query`: SQL over the output with DuckDB, with `frames` and `videos` views defined for you."""

from __future__ import annotations

import duckdb


def connect(out: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views `frames` and `videos` over the Hive-partitioned Parquet in ``out``."""
    con = duckdb.connect()
    base = out.rstrip("/")
    if base.startswith("s3://"):
        con.execute("INSTALL httpfs; LOAD httpfs;")
    for table in ("frames", "videos"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{base}/{table}/*/*.parquet', "
                    "hive_partitioning = true, hive_types_autocast = false, union_by_name = true)")
    return con


def run_query(sql: str, out: str, max_rows: int = 200) -> str:
    con = connect(out)
    rel = con.sql(sql)
    if rel is None:
        return "ok"
    return str(rel.limit(max_rows)) if max_rows else str(rel)
