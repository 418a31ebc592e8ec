"""An archive of many short videos: fixed cost per video, memory of the flow process, and a rerun with nothing
to do, with baselines from the same run.

1. Baseline: one video task's own time (``label_video`` as the Ray task runs it: isolated child, Triton
   gRPC) on a short clip, in this process, no Prefect or Ray.
2. `emoframe label` over N_SMALL and N_LARGE copies of real MP4 clips (1.6 s, 96x96 face-centred, H.264 +
   AAC), the real CLI in a subprocess: Prefect, Ray, embedded Triton. Steady state is read from the videos
   table (first to last finish), so start-up is left out; the fixed cost per video is what the run takes
   per video beyond (baseline / slots). The CLI process's peak RSS is sampled for both sizes until it
   prints its answer (and, apart, with its exit): flat means it does not grow with the number of videos.
3. Nothing to do: N_NOOP files with labelled rows already in the output (written by the real writers with
   the settings the rerun uses), then `emoframe label` on them: time to answer and whether any service
   started; `read_ledger` alone, too.

    python benchmarks/archive_scale.py                       # defaults below
    python benchmarks/archive_scale.py --small 20 --large 60 --noop 1000   # quick
    python benchmarks/archive_scale.py --publish             # docs/archive_scale.json (clean tree only)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state  # noqa: E402
from emoframe.workers.processes.ports import free_port  # noqa: E402

OUT_JSON = ROOT / "docs" / "archive_scale.json"
FPS = 15
FRAMES = 24  # 1.6 s
DISTINCT = 8  # distinct clips; the archive holds copies of them under other names


def make_archive(folder: Path, n: int, clips: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(clips[i % len(clips)], folder / f"{i:06d}.mp4")


def base_clips(tmp: Path) -> list[Path]:
    from tests.media import write_video

    return [write_video(tmp / "clips" / f"c{k}.mp4", FRAMES + k, FPS, audio_seconds=(FRAMES + k) / FPS)
            for k in range(DISTINCT)]


def baseline_task_s(clips: list[Path], tmp: Path) -> float:
    """Median wall time of one video task on its own (no Prefect, no Ray)."""
    from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.serving.triton_server import EmbeddedTriton
    from emoframe.workers.task.video_task import LabelConfig, Source, label_video

    times = []
    with EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=tmp / "baseline-triton.log") as srv:
        with TritonClient(srv.grpc_url) as c:
            version = c.served_version()
        cfg = LabelConfig(out=str(tmp / "baseline-out"), run_id="baseline", triton_url=srv.grpc_url,
                          model_version=version, face_mode="centred", show_progress=False)
        for k in range(3 * len(clips)):
            clip = clips[k % len(clips)]
            t = time.perf_counter()
            outcome = label_video(Source(str(clip), clip.stat().st_size, "b"), cfg)
            times.append(time.perf_counter() - t)
            assert outcome.row["status"] == "labelled", outcome.row
    return statistics.median(times[len(clips):])  # the first pass warms the caches


def run_cli(args: list[str], env: dict | None = None) -> tuple[float, int, str, int]:
    """Wall time, peak RSS (MB) of the CLI process itself (not Ray's or Triton's) until it printed its answer
    (the run summary), the peak including its exit afterwards, and its output. The exit is kept apart: after
    the answer the interpreter's teardown briefly rose from 816 to 905-941 MB at 400 videos and not at all at
    100 (measured with the CLI run in a sampled process; in-process, main() returned at 823 MB peak)."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "emoframe.flows.cli.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    peak, answered = [0, 0], threading.Event()  # [until the answer, overall]
    ps = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                return
            peak[1] = max(peak[1], rss)
            if not answered.is_set():
                peak[0] = max(peak[0], rss)
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    lines = []
    for line in cast(IO[str], proc.stdout):
        lines.append(line)
        if ANSWER.match(line):
            answered.set()
    proc.wait()
    th.join()
    out = "".join(lines)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"emoframe {' '.join(args)} exited {proc.returncode}:\n{out[-3000:]}")
    return time.perf_counter() - t, round(peak[0] / 2**20), out, round(peak[1] / 2**20)


# The first line of the run summary, the command's answer on stdout (flows/run/run_summary.py).
ANSWER = re.compile(r"^run \S+: \d+ labelled, ")


class PrefectServer:
    """A Prefect server of our own for one run (what `serve` and PREFECT_API_URL users have), so that what
    the run wrote into Prefect can be counted after it ends: task runs, their states, logs, artifacts."""

    def __init__(self, home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_URL": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        import urllib.request

        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the Prefect server did not start") from None
                time.sleep(1)

    def counts(self) -> dict:
        """Objects the run created in Prefect (each is at least one API call)."""
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def count() -> dict:
            async with get_client() as c:
                runs, offset = [], 0
                while batch := await c.read_task_runs(limit=200, offset=offset):
                    runs += batch
                    offset += len(batch)
                states = 0
                for r in runs:
                    states += len(await c.read_task_run_states(r.id))
                logs, offset = 0, 0
                while batch := await c.read_logs(limit=200, offset=offset):
                    logs += len(batch)
                    offset += len(batch)
                artifacts, offset = 0, 0
                while batch := await c.read_artifacts(limit=200, offset=offset):
                    artifacts += len(batch)
                    offset += len(batch)
                return {"task_runs": len(runs), "task_run_states": states, "logs": logs, "artifacts": artifacts}

        with temporary_settings({PREFECT_API_URL: self.url}):
            return asyncio.run(count())

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def labelled_run(n: int, clips: list[Path], tmp: Path, prefect: PrefectServer | None = None) -> dict:
    import duckdb

    src, out = tmp / f"archive-{n}", tmp / f"out-{n}"
    make_archive(src, n, clips)
    env = {"PREFECT_API_URL": prefect.url} if prefect else {}
    wall, rss, text, rss_exit = run_cli(["label", str(src), "--out", str(out), "--faces", "centred", "--no-report"],
                                        env)
    con = duckdb.connect()
    rows = con.sql(f"SELECT status, epoch(finished_at) AS t FROM read_parquet('{out}/videos/*/*.parquet')").fetchall()
    labelled = sum(r[0] == "labelled" for r in rows)
    ends = sorted(r[1] for r in rows)
    steady = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else float("nan")
    return {"videos": n, "labelled": labelled, "wall_s": round(wall, 1), "steady_s_per_video": round(steady, 3),
            "cli_peak_rss_mb": rss, "cli_peak_rss_with_exit_mb": rss_exit,
            "in_flight": next((ln for ln in text.splitlines() if "in flight" in ln), "")}


def noop_run(n: int, clips: list[Path], tmp: Path) -> dict:
    """N files already labelled (rows written by the real writers, as a run with these settings writes them);
    then the rerun."""
    from datetime import datetime, timezone

    from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO
    from emoframe.flows.archive.ledger import read_ledger
    from emoframe.flows.archive.sources import list_sources
    from emoframe.workers.spec.contract import MODEL_NAME, PREPROCESSING, fingerprint
    from emoframe.workers.spec.model_versions import latest_version
    from emoframe.workers.spec.policy import POLICY
    from emoframe.workers.spec.schema import STATUS_LABELLED, videos_path
    from emoframe.workers.output.sink import video_row, videos_table, write_atomic
    import pyarrow.fs as pafs

    src, out = tmp / f"noop-{n}", tmp / f"noop-out-{n}"
    make_archive(src, n, clips)
    version = latest_version(DEFAULT_MODEL_REPO / MODEL_NAME).name
    fs = pafs.LocalFileSystem()
    now = datetime.now(timezone.utc)
    for s in list_sources([str(src)]).sources:
        row = video_row(s.uri, status=STATUS_LABELLED, model_name=MODEL_NAME, run_id="seeded", started_at=now,
                        size_bytes=s.size_bytes, source_mtime=s.mtime, contract=fingerprint(PREPROCESSING),
                        face_mode="centred", policy=POLICY, frame_count=FRAMES, fps=FPS, duration_s=FRAMES / FPS)
        write_atomic(videos_table([row]), fs, videos_path(str(out), version, s.uri))
    t = time.perf_counter()
    ledger = read_ledger(str(out), version)
    ledger_s = time.perf_counter() - t
    assert len(ledger.rows) == n
    wall, rss, text, _ = run_cli(["label", str(src), "--out", str(out), "--faces", "centred", "--no-report"])
    # What a labelling run leaves at this size: it compacts a partition of 1,000 or more per-video files.
    from emoframe.flows.archive.compact import compact

    compact(str(out))
    t = time.perf_counter()
    assert len(read_ledger(str(out), version).rows) == n
    compacted_ledger_s = time.perf_counter() - t
    wall_c, _, text_c, _ = run_cli(["label", str(src), "--out", str(out), "--faces", "centred", "--no-report"])
    return {"videos": n, "ledger_read_s": round(ledger_s, 2), "rerun_wall_s": round(wall, 1),
            "compacted_ledger_read_s": round(compacted_ledger_s, 2), "compacted_rerun_wall_s": round(wall_c, 1),
            "services_started": "no service started" not in text + text_c, "cli_peak_rss_mb": rss,
            "already_done_line": next((ln for ln in text.splitlines() if ln.startswith("run ")), "")[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100, help="videos in the smaller labelled run")
    ap.add_argument("--large", type=int, default=400, help="videos in the larger labelled run")
    ap.add_argument("--noop", type=int, default=10_000, help="videos in the nothing-to-do rerun")
    ap.add_argument("--publish", action="store_true", help="write docs/archive_scale.json (clean tree only)")
    a = ap.parse_args()
    state = publish_state(a.publish)
    from emoframe.workers.task.resources import VideoTaskResources

    slots = VideoTaskResources().slots({"CPU": float(os.cpu_count() or 1), "memory": 1e15})
    with tempfile.TemporaryDirectory(prefix="emoframe-scale-") as tmp_name:
        tmp = Path(tmp_name)
        clips = base_clips(tmp)
        base = baseline_task_s(clips, tmp)
        print(f"baseline: one video task alone {base:.3f} s ({FRAMES / FPS:.1f} s clips); {slots} slots -> "
              f"ideal {base / slots:.3f} s of wall time per video", flush=True)
        # The small run reports to a Prefect server of our own, to count what a video costs Prefect's API.
        prefect = PrefectServer(tmp / "prefect-home")
        try:
            runs = [labelled_run(a.small, clips, tmp, prefect)]
            api = prefect.counts()
        finally:
            prefect.stop()
        per_video = {k: round(v / a.small, 2) for k, v in api.items()}
        print(f"Prefect objects per video (a run reporting to a Prefect server): {per_video}", flush=True)
        runs.append(labelled_run(a.large, clips, tmp))
        for r in runs:
            r["overhead_s_per_video"] = round(r["steady_s_per_video"] - base / slots, 3)
            print(f"{r['videos']:>6} videos: {r['labelled']} labelled in {r['wall_s']} s; steady state "
                  f"{r['steady_s_per_video']:.3f} s a video = {r['steady_s_per_video'] / (base / slots):.2f}x the "
                  f"ideal; fixed cost {r['overhead_s_per_video']:.3f} s a video; CLI peak RSS "
                  f"{r['cli_peak_rss_mb']} MB (with its exit {r['cli_peak_rss_with_exit_mb']} MB)", flush=True)
        growth = runs[1]["cli_peak_rss_mb"] / runs[0]["cli_peak_rss_mb"]
        print(f"CLI peak RSS, {a.large} vs {a.small} videos: {growth:.2f}x", flush=True)
        noop = noop_run(a.noop, clips, tmp)
        print(f"nothing to do, {noop['videos']:,} videos: ledger read {noop['ledger_read_s']} s, rerun answered in "
              f"{noop['rerun_wall_s']} s; compacted: ledger read {noop.get('compacted_ledger_read_s')} s, rerun "
              f"answered in {noop.get('compacted_rerun_wall_s')} s; services started: {noop['services_started']}",
              flush=True)
    record = {"commit": state["head"], "dirty": state["dirty"], "measured_at": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "clip": f"{FRAMES} frames at {FPS} fps, 96x96 H.264 + AAC",
              "baseline_task_s": round(base, 3), "slots": slots, "runs": runs, "rss_growth": round(growth, 2),
              "prefect_objects_per_video": per_video,
              "noop": noop}
    if a.publish:
        OUT_JSON.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {OUT_JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
