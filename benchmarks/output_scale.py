"""Reading the output at archive scale, before and after compaction (flows/archive/compact.py).

Writes N videos' worth of rows with the real writers (workers/output/sink.py: one frames file and one videos file per
video, as the pipeline leaves them; no pipeline run), then measures in the same run:
  - the ledger read a run starts with (flows/archive/ledger.read_ledger),
  - `SELECT count(*) FROM videos` and a label histogram over frames through `emoframe query`'s views
    (flows/analysis/query.connect, connection time included),
  - the compaction itself (and how long readers could see a row twice: its publish step),
and the same queries after compaction and on one single Parquet file of all frames rows (the baseline a
compacted output should stay within 2x of). Figures and ratios are printed; with --publish they go to
docs/output_scale.json, stamped with the commit (refused with uncommitted changes).

    python benchmarks/output_scale.py                 # 10,000 videos of ~300 frames: a few GB of disk
    python benchmarks/output_scale.py --videos 1000   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from published import ROOT, git_state  # noqa: E402

from emoframe.flows.archive.compact import compact  # noqa: E402
from emoframe.flows.archive.ledger import read_ledger  # noqa: E402
from emoframe.flows.analysis.query import connect  # noqa: E402
from emoframe.workers.spec.contract import NUM_CLASSES  # noqa: E402
from emoframe.workers.inference.labeling import Predictions  # noqa: E402
from emoframe.workers.spec.policy import POLICY  # noqa: E402
from emoframe.workers.spec.schema import frames_path, videos_path  # noqa: E402
from emoframe.workers.output.sink import frames_table, video_row, videos_table, write_atomic  # noqa: E402

PUBLISHED = ROOT / "docs" / "output_scale.json"
MV = "1"
COUNT_VIDEOS = "SELECT count(*) FROM videos"
HISTOGRAM = "SELECT label, count(*) AS n FROM frames GROUP BY label ORDER BY label NULLS FIRST"


def predictions(n: int, rng: np.random.Generator) -> Predictions:
    """A video's rows as the pipeline makes them: one face through most frames, a second in a third of them,
    a stretch without a face (and so rows without a track), probabilities smoothed by voting."""
    rows = []
    for f in range(n):
        faces = ([0] if f < 0.8 * n else []) + ([1] if f % 3 == 0 else [])
        rows += [(f, t) for t in faces] or [(f, -1)]
    frame = np.array([r[0] for r in rows], np.int32)
    track = np.array([r[1] for r in rows], np.int32)
    present = track >= 0
    # Labels hold for stretches (voting), probabilities vary a little around them.
    base = rng.dirichlet(np.ones(NUM_CLASSES) * 0.5, size=n // 30 + 1)
    probs = (base[frame // 30] + rng.normal(0, 0.01, (len(rows), NUM_CLASSES))).clip(0, 1).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    box = np.where(present[:, None], rng.uniform(0, 600, (len(rows), 4)), np.nan).astype(np.float32)
    score = np.where(present, rng.uniform(0.9, 1.0, len(rows)), np.nan).astype(np.float32)
    audio = np.ones(len(rows), bool)
    return Predictions(frame, track, present, box, score, audio, present | audio, probs,
                       probs.argmax(1).astype(np.int16), probs.max(1))


def write_archive(out: str, videos: int, frames: int, threads: int) -> float:
    """Returns the seconds it took. Lengths vary +-50% around ``frames``; one video in 50 failed."""
    fs = pafs.LocalFileSystem()
    started = time.monotonic()

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        uri = f"s3://archive/footage/{i % 97:02d}/clip_{i:06d}.mp4"
        now = datetime.now(timezone.utc)
        if i % 50 == 49:
            row = video_row(uri, status="failed", model_name="expression_fusion", run_id="bench", started_at=now,
                            size_bytes=1000 + i, source_mtime="etag", error_reason="decode_error",
                            error_message="moov atom not found")
        else:
            n = int(frames * rng.uniform(0.5, 1.5))
            write_atomic(frames_table(uri, 30.0, predictions(n, rng), "expression_fusion", "bench"), fs,
                         frames_path(out, MV, uri))
            row = video_row(uri, status="labelled", model_name="expression_fusion", run_id="bench", started_at=now,
                            size_bytes=10_000_000 + i, source_mtime="etag", content_hash=f"{i}:abc", duration_s=n / 30,
                            fps=30.0, frame_count=n, frames_expected=n, has_audio=True, width=1280, height=720,
                            face_mode="detect", tracks=2, policy=POLICY, contract="c")
        write_atomic(videos_table([row]), fs, videos_path(out, MV, uri))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for k, _ in enumerate(pool.map(one, range(videos)), 1):
            if k % 1000 == 0:
                print(f"  wrote {k}/{videos} videos ({time.monotonic() - started:.0f} s)", flush=True)
    return time.monotonic() - started


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (the first included: a run reads the ledger once), and the result."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def query(out: str, sql: str):
    con = connect(out)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def measure_reads(out: str, repeats: int) -> dict:
    ledger_s, ledger = timed(lambda: read_ledger(out, MV), repeats)
    count_s, count = timed(lambda: query(out, COUNT_VIDEOS), repeats)
    hist_s, hist = timed(lambda: query(out, HISTOGRAM), repeats)
    files = sum(len(f) for _, _, f in os.walk(out))
    return {"ledger_s": ledger_s, "ledger_rows": len(ledger.rows), "count_videos_s": count_s,
            "count_videos": count[0][0], "histogram_s": hist_s, "histogram": [list(r) for r in hist], "files": files}


def single_file_baseline(out: str, work: str, repeats: int) -> dict:
    """All frames rows in one Parquet file (DuckDB's default writer), the histogram read from it."""
    import duckdb

    one = f"{work}/all_frames.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_parquet('{out}/frames/*/*.parquet')) TO '{one}' (FORMAT parquet)")
    hist_s, _ = timed(lambda: duckdb.connect().sql(
        f"SELECT label, count(*) FROM read_parquet('{one}') GROUP BY label").fetchall(), repeats)
    return {"histogram_s": hist_s, "bytes": os.path.getsize(one)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=300, help="mean frames per video (lengths vary +-50%%)")
    ap.add_argument("--repeats", type=int, default=3, help="timed reads of each kind; the median is reported")
    ap.add_argument("--threads", type=int, default=4, help="writer threads while generating the archive")
    ap.add_argument("--workdir", help="where to generate the archive (default: a temporary folder, removed)")
    ap.add_argument("--publish", action="store_true",
                    help=f"write {PUBLISHED.relative_to(ROOT)} (refused with uncommitted changes)")
    a = ap.parse_args()
    git = git_state()  # the code measured: taken before the run
    if a.publish and git["dirty"]:
        sys.exit("output_scale --publish: the tree has uncommitted changes; published figures must come from a "
                 "commit (commit, then rerun)")
    work = a.workdir or tempfile.mkdtemp(prefix="emoframe-output-scale-")
    out = f"{work}/out"
    load_before = os.getloadavg()
    try:
        print(f"writing {a.videos} videos of ~{a.frames} frames with the real writers into {out}", flush=True)
        write_s = write_archive(out, a.videos, a.frames, a.threads)
        before = measure_reads(out, a.repeats)
        print(f"before: {before['files']} files; ledger {before['ledger_s']:.2f} s, count(*) videos "
              f"{before['count_videos_s']:.2f} s, label histogram {before['histogram_s']:.2f} s", flush=True)
        result = compact(out)
        if result.refused:
            sys.exit(f"compaction refused: {result.refused}")
        part = result.partitions[0]
        after = measure_reads(out, a.repeats)
        baseline = single_file_baseline(out, work, a.repeats)
        compacted_bytes = sum(os.path.getsize(p) for p in part.outputs)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if (before["histogram"], before["count_videos"], before["ledger_rows"]) != \
            (after["histogram"], after["count_videos"], after["ledger_rows"]):
        sys.exit("compaction changed an answer: the figures are not published")
    ratios = {
        "ledger_before_over_after": before["ledger_s"] / after["ledger_s"],
        "count_videos_before_over_after": before["count_videos_s"] / after["count_videos_s"],
        "histogram_before_over_after": before["histogram_s"] / after["histogram_s"],
        "histogram_compacted_over_single_file": after["histogram_s"] / baseline["histogram_s"],
    }
    report = {
        "git": git, "nproc": os.cpu_count(), "loadavg": {"before": load_before, "after": os.getloadavg()},
        "settings": {"videos": a.videos, "mean_frames": a.frames, "repeats": a.repeats, "storage": "local",
                     "row_group_rows": 100_000},
        "write_s": write_s, "frames_rows": part.rows.get("frames"),
        "before": {k: v for k, v in before.items() if k != "histogram"},
        "compaction": {"seconds": result.seconds, "publish_s": part.publish_s, "outputs": len(part.outputs),
                       "bytes": compacted_bytes, "own_files": part.own_files},
        "after": {k: v for k, v in after.items() if k != "histogram"},
        "single_file": baseline, "ratios": ratios,
        "targets": {"compacted_histogram_within_2x_of_single_file": ratios["histogram_compacted_over_single_file"] <= 2,
                    "ledger_after_under_5_s": after["ledger_s"] < 5},
    }
    print(f"\n{a.videos} videos, {part.rows.get('frames')} frames rows (generated in {write_s:.0f} s), "
          f"median of {a.repeats}, {os.cpu_count()} cores, load {load_before[0]:.1f}")
    print(f"{'':28}{'before':>10}{'after':>10}{'ratio':>8}")
    for name, key in (("ledger read", "ledger_s"), ("SELECT count(*) FROM videos", "count_videos_s"),
                      ("label histogram (frames)", "histogram_s")):
        print(f"{name:28}{before[key]:>9.3f}s{after[key]:>9.3f}s{before[key] / after[key]:>7.1f}x")
    print(f"{'files':28}{before['files']:>10}{after['files']:>10}")
    print(f"histogram on one single file: {baseline['histogram_s']:.3f} s; compacted / single file = "
          f"{ratios['histogram_compacted_over_single_file']:.2f}x (target <= 2x)")
    print(f"compaction: {result.seconds:.1f} s for {part.own_files} per-video files -> {len(part.outputs)} files "
          f"({compacted_bytes / 1e6:.0f} MB); readers could see a row twice for {part.publish_s * 1000:.0f} ms")
    if a.publish:
        PUBLISHED.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {PUBLISHED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
