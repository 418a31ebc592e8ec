"""What the reliability tests observe, kept for the README's reliability table (`make reliability`,
benchmarks/reliability.py). Observations are written only when EMOFRAME_RELIABILITY_RECORD names a file:
one JSON object a line, appended, so a test's figures reach the table as the test measured them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb


def record(kind: str, case: str, outcome: str, **figures: int) -> None:
    """``kind``: "input" (a file and what became of it) or "fault" (what was done to a run)."""
    path = os.environ.get("EMOFRAME_RELIABILITY_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "case": case, "outcome": outcome, **figures}) + "\n")


def frame_accounting(con: duckdb.DuckDBPyConnection, expected: dict[str, int]) -> dict[str, int]:
    """Against the decoded frame count of each healthy video: frames lost (no row), rows duplicated (a frame
    index twice), and healthy videos whose videos row is not `labelled`."""
    got = {uri: (n, distinct) for uri, n, distinct in con.sql(
        "SELECT source_uri, count(*), count(DISTINCT frame_index) FROM frames GROUP BY 1").fetchall()}
    status = dict(con.sql("SELECT source_uri, status FROM videos").fetchall())
    return {"lost": sum(n - got.get(uri, (0, 0))[1] for uri, n in expected.items()),
            "duplicated": sum(n - distinct for n, distinct in got.values()),
            "healthy_failed": sum(status.get(uri) != "labelled" for uri in expected)}


def repo_relative(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name
