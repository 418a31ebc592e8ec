"""The README's table of user errors: each mistake tried with the real CLI, its message, exit status and the
time it took to answer (wall time of the whole command, Python start included).

    python benchmarks/user_errors.py            # print the table
    python benchmarks/user_errors.py --publish  # write docs/user_errors.json and the README table (clean tree)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state, write_readme_block  # noqa: E402

JSON_PATH = ROOT / "docs" / "user_errors.json"
START, END = "<!-- user-errors:start -->", "<!-- user-errors:end -->"


def cases(tmp: Path, busy_port: int) -> list[tuple[str, list[str]]]:
    """(what the user did, the command's arguments). ``tmp`` holds a clip, a file and an output folder;
    something listens on ``busy_port``."""
    clip, out = str(tmp / "clip.mp4"), str(tmp / "out")
    return [
        ("no videos named (an empty $VAR in a cron line)", ["label", "--out", out]),
        ("a source that does not exist", ["label", str(tmp / "clpi.mp4"), "--out", out]),
        ("`--out` is a file", ["label", clip, "--out", str(tmp / "notes.txt")]),
        ("credentials inside a URI", ["label", "s3://AKIAEXAMPLE:secret@bucket/videos", "--out", out]),
        ("Triton URL where nothing listens", ["label", clip, "--out", out, "--triton-url", "127.0.0.1:9"]),
        ("Triton URL written as HTTP", ["label", clip, "--out", out, "--triton-url", "http://127.0.0.1:8001"]),
        ("a model repository without the model", ["label", clip, "--out", out, "--model-repo", str(tmp)]),
        ("a stride out of range", ["label", clip, "--out", out, "--stride", "0"]),
        ("a mistyped flag", ["label", clip, "--out", out, "--stirde", "8"]),
        ("a mistyped command", ["lable", clip]),
        ("SQL with a typo", ["query", "SELEC count(*) FROM videos", "--out", str(tmp / "labelled")]),
        ("query of a folder with no output", ["query", "SELECT 1", "--out", str(tmp)]),
        ("report of a folder with no output", ["report", str(tmp)]),
        ("prune of a folder with no output", ["prune", str(tmp)]),
        ("a standalone Triton on a port in use", ["triton", "--grpc-port", str(busy_port)]),
    ]


def setup(tmp: Path) -> None:
    """A clip, a file, and an output holding one videos row (written by the real writer) to query."""
    from datetime import datetime, timezone

    import pyarrow.fs as pafs

    from tests.media import write_video
    from emoframe.workers.spec.schema import STATUS_FAILED, videos_path
    from emoframe.workers.output.sink import video_row, videos_table, write_atomic

    write_video(tmp / "clip.mp4", 3)
    (tmp / "notes.txt").write_text("not a folder")
    row = video_row(str(tmp / "clip.mp4"), status=STATUS_FAILED, model_name="expression_fusion", run_id="errors",
                    started_at=datetime.now(timezone.utc), error_reason="not_a_video", error_message="example")
    write_atomic(videos_table([row]), pafs.LocalFileSystem(),
                 videos_path(str(tmp / "labelled"), "1", row["source_uri"]))


def measure(tmp: Path) -> list[dict]:
    import socket

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    busy = socket.create_server(("127.0.0.1", 0))  # a listener, as another Triton would be
    with busy:
        return _measure(tmp, env, busy.getsockname()[1])


def _measure(tmp: Path, env: dict[str, str], busy_port: int) -> list[dict]:
    rows = []
    for what, args in cases(tmp, busy_port):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "emoframe.flows.cli.main", *args],
                             capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
        wall = time.perf_counter() - t
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        message = (lines[-1] if lines else res.stdout.strip().splitlines()[-1]).replace(str(tmp), "<tmp>")
        message = message.replace(str(busy_port), "<port>")
        rows.append({"what": what, "command": "emoframe " + " ".join(a.replace(str(tmp), "<tmp>")
                                                                    .replace(str(ROOT), "<repo>")
                                                                    .replace(str(busy_port), "<port>") for a in args),
                     "exit": res.returncode, "seconds": round(wall, 1), "message": message,
                     "traceback": "Traceback" in res.stdout + res.stderr, "stderr_lines": len(lines),
                     "usage_first": bool(lines) and lines[0].startswith("usage:")})
    return rows


def _cell(message: str) -> str:
    """A message inside a Markdown code span in a table cell: no pipe, no backtick."""
    return message.replace("|", "/").replace("`", "'")


def render(data: dict) -> str:
    head = (f"Measured at {data['commit'][:7]} on {data['machine']} (`benchmarks/user_errors.py`): every mistake "
            "is answered before any service starts, with one line on stderr (after the command's usage for a "
            "mistyped flag or command) and no traceback.\n\n"
            "| mistake | exit | answered in | message |\n|---|---|---|---|")
    body = [f"| {r['what']} | {r['exit']} | {r['seconds']:.1f} s | `{_cell(r['message'])}` |" for r in data["rows"]]
    return "\n".join([head, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publish", action="store_true", help="write docs/user_errors.json and the README table")
    a = ap.parse_args()
    state = publish_state(a.publish)
    with tempfile.TemporaryDirectory(prefix="emoframe-errors-") as tmp_name:
        tmp = Path(tmp_name)
        setup(tmp)
        rows = measure(tmp)
    data = {"commit": state["head"], "dirty": state["dirty"], "measured_at": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores", "rows": rows}
    print(render(data))
    bad = [r for r in rows if r["exit"] != 2 or r["traceback"]]
    if bad:
        sys.exit(f"not a clean user error: {bad}")
    if a.publish:
        JSON_PATH.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        write_readme_block(START, END, render(data))
        print(f"wrote {JSON_PATH.relative_to(ROOT)} and the README table")


if __name__ == "__main__":
    main()
