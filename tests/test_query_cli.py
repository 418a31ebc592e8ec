"""`emoframe query`: every column, a row cap that says so, CSV/JSON/Parquet export, and one line for a typo."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from emoframe.flows.analysis.query import QueryError, run_query
from emoframe.workers.spec.schema import VIDEOS_SCHEMA, videos_path
from emoframe.workers.output.sink import video_row, videos_table, write_atomic

ROOT = Path(__file__).resolve().parent.parent
URIS = [f"/archive/clip{i}.mp4" for i in range(3)]


@pytest.fixture
def out(tmp_path) -> Path:
    """An output folder holding three failed videos rows (the videos table alone is enough to query)."""
    for uri in URIS:
        row = video_row(uri, status="failed", model_name="m", run_id="r", error_reason="empty_file",
                        error_message="empty, with a, comma", started_at=datetime.now(timezone.utc))
        write_atomic(videos_table([row]), pafs.LocalFileSystem(), videos_path(str(tmp_path), "3", uri))
    return tmp_path


def test_a_table_shows_every_column_and_says_when_rows_were_left_out(out):
    text = run_query("SELECT * FROM videos ORDER BY source_uri", str(out))
    header = text.splitlines()[0]
    assert [c.strip() for c in header.split("|")] == VIDEOS_SCHEMA.names + ["model_version"]
    assert f"(3 rows, {len(VIDEOS_SCHEMA) + 1} columns)" in text and "shown" not in text
    capped = run_query("SELECT source_uri FROM videos ORDER BY 1", str(out), max_rows=2)
    assert URIS[1] in capped and URIS[2] not in capped and "first 2 rows shown" in capped


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", "query", *args],
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_csv_json_and_parquet_carry_every_row(out, tmp_path):
    sql = "SELECT source_uri, error_message, model_version FROM videos ORDER BY 1"
    res = _cli(sql, "--out", str(out), "--format", "csv", "--max-rows", "1")  # the cap is for tables only
    rows = list(csv.DictReader(io.StringIO(res.stdout.decode())))
    assert res.returncode == 0 and [r["source_uri"] for r in rows] == URIS
    assert rows[0]["error_message"] == "empty, with a, comma" and rows[0]["model_version"] == "3"
    res = _cli(sql, "--out", str(out), "--format", "json")
    assert [json.loads(line)["source_uri"] for line in res.stdout.decode().splitlines()] == URIS
    target = tmp_path / "x.parquet"
    res = _cli(sql, "--out", str(out), "--format", "parquet", "--output", str(target))
    assert res.returncode == 0 and pq.read_table(target).column("source_uri").to_pylist() == URIS


@pytest.mark.parametrize("args, why", [(("SELEC 1",), "syntax error"),
                                       (("SELECT nope FROM videos",), "nope"),
                                       (("SELECT 1", "--format", "parquet"), "--output"),
                                       (("SELECT 1", "--out", "/nowhere"), "no emoframe output")])
def test_mistakes_are_one_line_and_exit_2(out, args, why):
    args = args if "--out" in args else (*args, "--out", str(out))
    res = _cli(*args)
    err = res.stderr.decode()
    assert res.returncode == 2 and len(err.strip().splitlines()) == 1 and why in err, err
    assert "Traceback" not in err
    with pytest.raises(QueryError):
        run_query(args[0], args[args.index("--out") + 1], fmt=args[2] if args[1] == "--format" else "table")


def test_debug_shows_the_traceback_behind_the_one_line_error(out):
    res = _cli("SELEC 1", "--out", str(out), "--debug")
    err = res.stderr.decode().strip().splitlines()
    assert res.returncode == 2 and err[0] == "Traceback (most recent call last):", err
    assert any("duckdb" in line.lower() and "Parser" in line for line in err), err  # the library's own error
    assert err[-1].startswith("emoframe query: ") and "syntax error" in err[-1]


def test_model_version_reads_as_a_string_in_emoframe_and_in_the_readme_recipes(tmp_path):
    """Versions "3" and "10": the README's recipes for DuckDB and pyarrow and `emoframe query` all
    give the string, where readers left to guess give a number (and "10" < "3" only as a string)."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

    for version in ("3", "10"):
        row = video_row(URIS[0], status="failed", model_name="m", run_id="r", error_reason="empty_file",
                        started_at=datetime.now(timezone.utc))
        write_atomic(videos_table([row]), pafs.LocalFileSystem(), videos_path(str(tmp_path), version, URIS[0]))
    folder = tmp_path / "videos"

    guessed = duckdb.sql(f"SELECT typeof(model_version) FROM read_parquet('{folder}/*/*.parquet', "
                         "hive_partitioning = true) LIMIT 1").fetchall()[0][0]
    assert guessed != "VARCHAR"  # what the README warns about
    duck = duckdb.sql(f"SELECT any_value(typeof(model_version)), list(model_version ORDER BY model_version) FROM "
                      f"read_parquet('{folder}/*/*.parquet', hive_partitioning = true, "
                      "hive_types = {'model_version': 'VARCHAR'}, union_by_name = true)").fetchall()[0]
    assert duck == ("VARCHAR", ["10", "3"])
    part = ds.partitioning(pa.schema([("model_version", pa.string())]), flavor="hive")
    table = ds.dataset(str(folder), partitioning=part).to_table()
    assert table.schema.field("model_version").type == pa.string()
    assert sorted(table["model_version"].to_pylist()) == ["10", "3"]
    buf = io.BytesIO()
    run_query("SELECT typeof(model_version) AS t, count(*) AS n FROM videos GROUP BY 1", str(tmp_path),
              fmt="csv", dest=buf)
    assert buf.getvalue().decode().splitlines()[1:] == ['"VARCHAR",2'], buf.getvalue()
