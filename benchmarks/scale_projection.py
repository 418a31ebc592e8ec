"""docs/scale.md: a projection to 1,000,000 videos on 100 GPU nodes, computed from what the benchmarks measured
(docs/archive_scale.json, docs/s3_requests.json, docs/output_scale.json) and the assumptions stated in
ASSUMED. Nothing in the page is typed by hand: rerun this after any of those files changes.

    python benchmarks/scale_projection.py    # rewrites docs/scale.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "docs" / "scale.md"
START, END = "<!-- archive-scale:start -->", "<!-- archive-scale:end -->"
SOURCES = {name: ROOT / "docs" / f"{name}.json"
           for name in ("archive_scale", "s3_requests", "output_scale", "triton_bench_cpu")}

# What the projection assumes (not measured here: no cluster, no GPU).
ASSUMED = {
    "videos": 1_000_000,
    "nodes": 100,
    "cpus_per_node": 16,  # video slots per node: 1 CPU and 1.5 GB each (workers/task/resources.py)
    "video_seconds": 60,
    "fps": 30,
    "detect_frames_per_s_per_core": 20,  # the face front end on one core (README: 17-25 measured)
    "frames_rows_per_compacted_file": 4_000_000,  # flows/archive/compact.py
}


def load() -> dict:
    return {name: json.loads(path.read_text()) for name, path in SOURCES.items()}


def render(m: dict, a: dict = ASSUMED) -> str:
    arch, s3, out, triton = m["archive_scale"], m["s3_requests"], m["output_scale"], m["triton_bench_cpu"]
    from emoframe.workers.task.triton_nodes import cpu_instance_threads

    triton_threads = triton["stamp"].get("cpu_instance_threads") or \
        cpu_instance_threads(triton["stamp"]["cpu_count"]["usable"])
    triton_ms = triton_threads * 1000 / triton["kinds"]["KIND_CPU"]["throughput"]["labelled_frames_per_s"]
    n = a["videos"]
    slots = a["nodes"] * a["cpus_per_node"]
    task_s = a["video_seconds"] * a["fps"] / a["detect_frames_per_s_per_core"]
    rate = slots / task_s  # videos finished per second, cluster-wide
    hours = n / rate / 3600
    prefect = arch["prefect_objects_per_video"]
    prefect_per_video = sum(prefect.values())
    first = sum(s3["first_run"].values()) / s3["videos"]
    rerun = sum(s3["rerun"].values()) / s3["videos"]
    out_before, out_after = out["before"], out["after"]
    per_video_ledger_before = out_before["ledger_s"] / out["settings"]["videos"]
    frames_rows = n * a["video_seconds"] * a["fps"]
    compacted_files = -(-frames_rows // a["frames_rows_per_compacted_file"])
    stamps = ", ".join(f"{name} at {(d.get('commit') or d.get('git', {}).get('head', ''))[:7]}"
                       for name, d in m.items())
    first_run = s3["first_run_per_video"]
    writes_per_video = first_run.get("PUT", 0) + first_run.get("COPY", 0) + first_run.get("PUT (multipart)", 0)
    lines = [
        "# emoframe at a million videos: a projection",
        "",
        f"Rendered by `benchmarks/scale_projection.py` from measured figures ({stamps}) and the assumptions "
        "below. Measured on a 2-core machine shared with other work; the projection multiplies per-video "
        "counts, which do not depend on the machine's speed.",
        "",
        "## Assumptions",
        "",
        f"{n:,} videos of {a['video_seconds']} s at {a['fps']} fps, labelled with `--faces detect` at "
        f"{a['detect_frames_per_s_per_core']} frames/s per core, on {a['nodes']} nodes of "
        f"{a['cpus_per_node']} video slots each ({slots:,} videos at once), one Triton per node. One video task: "
        f"{task_s:.0f} s; the cluster finishes {rate:.1f} videos/s; the archive takes {hours:.1f} h.",
        "",
        "## Per video, measured",
        "",
        "| what | per video | source |",
        "|---|---|---|",
        f"| Prefect objects written (task runs, states, logs, artifacts) | {prefect_per_video:.1f} "
        f"({', '.join(f'{k} {v:g}' for k, v in prefect.items())}) | archive_scale.json, "
        f"{arch['runs'][0]['videos']} videos against a Prefect server |",
        f"| S3 requests, first run | {first:.1f} "
        f"({', '.join(f'{k} {v:g}' for k, v in s3['first_run_per_video'].items())}) "
        f"| s3_requests.json, {s3['videos']} videos |",
        f"| S3 requests, rerun with nothing new | {rerun:.1f} | s3_requests.json |",
        f"| ledger read before compaction | {per_video_ledger_before * 1000:.2f} ms | output_scale.json, "
        f"{out['settings']['videos']:,} videos |",
        f"| fixed cost of a short video beyond its own work (steady state) | "
        f"{arch['runs'][-1]['overhead_s_per_video']:.2f} s of wall time on {arch['slots']} slots "
        "| archive_scale.json |",
        "",
        f"## At {n:,} videos",
        "",
        "| what | total | rate while running |",
        "|---|---|---|",
        f"| Prefect API writes | {prefect_per_video * n:,.0f} | {prefect_per_video * rate:,.0f}/s |",
        f"| S3 requests, first run | {first * n:,.0f} | {first * rate:,.0f}/s |",
        f"| S3 requests, each rerun with nothing new | {rerun * n:,.0f} | (one burst at the start) |",
        f"| output files before compaction | {2 * n:,} | |",
        f"| output files after compaction | about {compacted_files + 1:,} | |",
        f"| ledger read at each run start, uncompacted | {per_video_ledger_before * n / 60:,.0f} min | |",
        f"| ledger read, compacted (10,000 measured: {out_after['ledger_s']:.2f} s), linear | "
        f"{out_after['ledger_s'] * n / out['settings']['videos']:,.0f} s | |",
        "",
        "## Where the first bottleneck is",
        "",
        f"1. **The driver's memory and the run's start**, before anything else: the ledger is read whole into "
        "the flow process (a dict of 13 fields per video; estimated, not measured: "
        f"about 1 KB each, 1 GB at {n:,}), and an S3 prefix is listed in "
        "one pyarrow call (every entry in memory at once). Uncompacted, the ledger read alone is the figure "
        "above; compacted, it is seconds. Next step: read the ledger per listing batch (the compacted videos "
        "table is sorted by source_uri, so a batch's rows are a range read) and list prefixes page by page.",
        f"2. **Prefect's API**: {prefect_per_video * rate:,.0f} writes/s while running. A Prefect server on "
        "PostgreSQL is built for that; the temporary SQLite server a local run starts was not measured at that "
        "rate, so cluster runs should report to a real server (`serve`, or PREFECT_API_URL). "
        "Most of it is now the per-video log line of the flow; task runs and their states are few because "
        "short videos go up to 16 to a task while every slot is busy.",
        f"3. **The object store**: {first * rate:,.0f} requests/s is far under S3's per-prefix limits (3,500 "
        "writes/s, 5,500 reads/s); the writes of a run are spread over one prefix per model version, so "
        "they are the first to meet that limit, at about "
        f"{3500 / max(1e-9, writes_per_video):,.0f} "
        "videos/s.",
        "4. **Triton** on GPU nodes (one per node, `--triton per-node`) serves that node's videos only; on CPU "
        f"instances model version {triton['kinds']['KIND_CPU']['served_version']} costs about "
        f"{triton_ms:.1f} ms of CPU per labelled frame of one face (docs/triton_bench_cpu.json: "
        f"{triton['kinds']['KIND_CPU']['throughput']['labelled_frames_per_s']:,.0f} labelled frames/s with "
        f"{triton_threads} thread{'s' if triton_threads > 1 else ''} on a {triton['stamp']['cpu_count']['usable']}"
        "-core machine), so a CPU-only node gives Triton that share of its cores per face in view.",
        "",
    ]
    return "\n".join(lines)


def readme_table(m: dict) -> str:
    """The README's table of what was measured at archive scale (the same files as the page)."""
    arch, s3, out = m["archive_scale"], m["s3_requests"], m["output_scale"]
    before, after, single = out["before"], out["after"], out["single_file"]
    small, large = arch["runs"][0], arch["runs"][-1]
    noop = arch["noop"]
    n_out = out["settings"]["videos"]
    rows = [
        ("ledger read at a run's start, per-video files -> compacted", f"{n_out:,} videos",
         f"{before['ledger_s']:.1f} s -> {after['ledger_s']:.2f} s", "< 5 s"),
        ("`SELECT count(*) FROM videos`, per-video files -> compacted", f"{n_out:,} videos",
         f"{before['count_videos_s']:.1f} s -> {after['count_videos_s']:.2f} s", ""),
        ("label histogram over frames: compacted / one single file", f"{out['frames_rows']:,} rows",
         f"{after['histogram_s']:.2f} s / {single['histogram_s']:.2f} s = "
         f"{after['histogram_s'] / single['histogram_s']:.2f}x", "<= 2x"),
        ("compaction", f"{out['compaction']['own_files']:,} files -> {out['compaction']['outputs']}",
         f"{out['compaction']['seconds']:.0f} s", ""),
        ("a rerun with nothing new (`emoframe label`, whole command), per-video files"
         + (" -> compacted" if "compacted_rerun_wall_s" in noop else ""), f"{noop['videos']:,} videos",
         f"{noop['rerun_wall_s']:.1f} s" + (f" -> {noop['compacted_rerun_wall_s']:.1f} s"
                                           if "compacted_rerun_wall_s" in noop else "")
         + f"; services started: {'yes' if noop['services_started'] else 'none'}", "< 5 s"),
        ("fixed cost per short video at steady state, beyond its own work / slots",
         f"{large['videos']} videos of {arch['clip'].split(' at ')[0]}", f"{large['overhead_s_per_video']:.2f} s",
         "<= 0.2 s"),
        ("peak memory of the flow process" + (", until its answer (with its exit)" if "cli_peak_rss_with_exit_mb"
                                              in large else ""), f"{small['videos']} vs {large['videos']} videos",
         f"{small['cli_peak_rss_mb']} vs {large['cli_peak_rss_mb']} MB ({arch['rss_growth']:.2f}x)"
         + (f" ({small['cli_peak_rss_with_exit_mb']} vs {large['cli_peak_rss_with_exit_mb']} MB)"
            if "cli_peak_rss_with_exit_mb" in large else ""), "flat"),
        ("S3 requests per video: first run / rerun with nothing new", f"{s3['videos']} videos",
         f"{sum(s3['first_run'].values()) / s3['videos']:.1f} / {sum(s3['rerun'].values()) / s3['videos']:.1f}", ""),
    ]
    head = ("| measured | at | figure | target |\n|---|---|---|---|")
    return "\n".join([head, *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)])


def main() -> None:
    missing = [str(p.relative_to(ROOT)) for p in SOURCES.values() if not p.exists()]
    if missing:
        sys.exit(f"measure first: {', '.join(missing)} missing")
    from benchmarks.published import write_readme_block

    m = load()
    PAGE.write_text(render(m))
    write_readme_block(START, END, readme_table(m))
    print(f"wrote {PAGE.relative_to(ROOT)} and the README's archive-scale table")


if __name__ == "__main__":
    main()
