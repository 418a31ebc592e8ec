"""Pipeline benchmark, face-centred input: figures and ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/pipeline_bench.py [--minutes 1] [--long-minutes 10] [--skip-long]
    .venv/bin/python benchmarks/pipeline_bench.py --publish   # what `make bench` runs: docs/pipeline_bench.json
                                                              # (refused on a dirty tree) and the README table

On one generated 720p video with audio (a drawn face, as the synthetic set's; ``--faces centred``): raw
decord decode fps at the crop size; decode + preprocessing fps (ratio to raw); model throughput in-process
(the exported forward) vs through the embedded Triton (as deployed) at the same batch (ratio); end-to-end
frames per second of one video task and its realtime factor; peak RSS of the video task on a 1-minute and
a 10-minute video (each in a fresh process, ratio long/short).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  -- before decord

from emoframe.workers.spec.contract import INPUT_NAMES, MAX_BATCH_SIZE, PREPROCESSING  # noqa: E402

FPS = 25
SR = 48000
SIZE = (1280, 720)


def make_video(path: Path, seconds: float) -> Path:
    """720p H.264 + AAC: a face that moves and changes, over a textured background; a voiced tone."""
    import av
    import cv2

    if path.exists():
        return path
    n = int(seconds * FPS)
    rng = np.random.default_rng(0)
    bg = cv2.resize(rng.integers(40, 120, (90, 160, 3), dtype=np.uint8), SIZE, interpolation=cv2.INTER_CUBIC)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "28"}
        as_ = out.add_stream("aac", rate=SR, layout="stereo")
        apos = 0
        for i in range(n):
            img = bg.copy()
            cx, cy = 640 + int(200 * np.sin(i / 50)), 360 + int(60 * np.cos(i / 70))
            cv2.ellipse(img, (cx, cy), (150, 190), 0, 0, 360, (210, 180, 150), -1)
            for dx in (-55, 55):
                cv2.circle(img, (cx + dx, cy - 40), 14, (30, 30, 30), -1)
            cv2.ellipse(img, (cx, cy + 70), (60, 10 + (i // 10) % 30), 0, 0, 180, (120, 30, 30), 6)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(vs.encode(frame))
            while apos < round((i + 1) / FPS * SR):
                t = (apos + np.arange(1024)) / SR
                tone = (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > -0.3)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = SR, apos, Fraction(1, SR)
                out.mux(as_.encode(af))
                apos += 1024
        out.mux(vs.encode(None))
        out.mux(as_.encode(None))
    return path


def bench_decode(path: Path) -> dict:
    from emoframe.workers.media.decode import VideoDecoder
    from emoframe.workers.media.preprocess import iter_video_inputs

    dec = VideoDecoder()
    info = dec.probe(str(path))
    c = PREPROCESSING.crop_size
    t = time.perf_counter()
    n = sum(len(f) for f in dec.iter_frames(str(path), c, c, 256))
    raw = n / (time.perf_counter() - t)
    t = time.perf_counter()
    m = sum(len(ch) for ch in iter_video_inputs(str(path), info, face_mode="centred"))
    pre = m / (time.perf_counter() - t)
    return {"frames": n, "raw_decode_fps": raw, "decode_preprocess_fps": pre, "preprocess_ratio": pre / raw}


def batches(n_batches: int, batch: int) -> list[dict]:
    from emoframe.training.export import example_inputs

    out = []
    for i in range(n_batches):
        x = example_inputs(batch, seed=i)
        out.append({s: t.numpy() for s, t in zip(INPUT_NAMES, x)})
    return out


def bench_model(model_dir: Path, triton_url: str, n_batches: int = 30) -> dict:
    from emoframe.workers.inference.triton_client import TritonClient

    scripted = torch.jit.load(str(model_dir / "model.pt"))
    data = batches(n_batches, MAX_BATCH_SIZE)
    frames = n_batches * MAX_BATCH_SIZE * PREPROCESSING.window
    with torch.inference_mode():
        scripted(*[torch.from_numpy(v) for v in data[0].values()])  # warm-up
        t = time.perf_counter()
        for b in data:
            scripted(*[torch.from_numpy(v) for v in b.values()])
        inproc = frames / (time.perf_counter() - t)
    with TritonClient(triton_url, max_in_flight=4) as client:
        list(client.infer_many(data[:2]))  # warm-up
        t = time.perf_counter()
        for _ in client.infer_many(data):
            pass
        triton = frames / (time.perf_counter() - t)
    return {"batch_windows": MAX_BATCH_SIZE, "inprocess_frames_per_s": inproc, "triton_frames_per_s": triton,
            "triton_ratio": triton / inproc}


def run_task(path: Path, triton_url: str, out: Path) -> dict:
    """One video task in a fresh process; returns its wall time and peak RSS (VmHWM).

    isolate=False: the same work in this process rather than in the watchdog's child, so that VmHWM
    measures the video work itself (a forkserver child's memory is not the caller's)."""
    code = f"""
import json, threading, time
import torch
from emoframe.workers.task.video_task import LabelConfig, Source, label_video

def status(key):
    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) / 1024

samples, stop = [], threading.Event()
def sample():  # RSS over time: a plateau and growth have the same peak, not the same second half
    while not stop.is_set():
        samples.append((time.perf_counter(), status('VmRSS')))
        stop.wait(0.2)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
o = label_video(Source({str(path)!r}),
                LabelConfig(out={str(out)!r}, run_id='bench', triton_url={triton_url!r}, model_version='bench',
                            isolate=False, face_mode='centred'))
wall = time.perf_counter() - t
stop.set()
half = t + wall / 2
print(json.dumps({{"wall_s": wall, "frames": o.row["frame_count"], "status": o.row["status"],
                  "peak_rss_mb": status('VmHWM'),
                  "first_half_peak_rss_mb": max(r for s, r in samples if s <= half),
                  "second_half_peak_rss_mb": max((r for s, r in samples if s > half), default=None)}}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


START, END = "<!-- pipeline-bench:start -->", "<!-- pipeline-bench:end -->"
PUBLISHED = ROOT / "docs" / "pipeline_bench.json"


def render(r: dict) -> str:
    """The README's table and the stamp of the run that measured it."""
    d, m, e, st = r["decode"], r["model"], r["short"], r["stamp"]
    rows = [
        ("raw decord decode, resized to the crop size in the decoder", f"{d['raw_decode_fps']:.0f} fps",
         "baseline", ""),
        ("decode + preprocessing (crops, masks, log-mel, timestamps)", f"{d['decode_preprocess_fps']:.0f} fps",
         f"{d['preprocess_ratio']:.2f} of raw", ">= 0.8"),
        (f"model, batch of {m['batch_windows']} windows, in-process TorchScript forward",
         f"{m['inprocess_frames_per_s']:.0f} frames/s", "baseline", ""),
        ("model, same batches through Triton (gRPC, 4 in flight)", f"{m['triton_frames_per_s']:.0f} frames/s",
         f"{m['triton_ratio']:.2f} of in-process", ">= 0.7"),
        ("end to end, one video task (decode -> Parquet)", f"{e['frames'] / e['wall_s']:.0f} frames/s",
         f"{e['frames'] / FPS / e['wall_s']:.1f}x realtime", ""),
        (f"peak RSS of the video task, {r['settings']['minutes']:g}-minute video", f"{e['peak_rss_mb']:.0f} MB",
         "baseline", ""),
    ]
    if r.get("long"):
        lg = r["long"]
        rows.append((f"peak RSS of the video task, {r['settings']['long_minutes']:g}-minute video",
                     f"{lg['peak_rss_mb']:.0f} MB", f"{lg['peak_rss_mb'] / e['peak_rss_mb']:.2f} of "
                     f"{r['settings']['minutes']:g}-minute", "<= 1.2"))
        if lg.get("second_half_peak_rss_mb"):
            rows.append(("  the same, second half of its run / first half",
                         f"{lg['second_half_peak_rss_mb']:.0f} / {lg['first_half_peak_rss_mb']:.0f} MB",
                         f"{lg['second_half_peak_rss_mb'] / lg['first_half_peak_rss_mb']:.2f}", ""))
    lines = ["| measure | figure | ratio | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {t} |" for a, b, c, t in rows]
    load = "/".join(f"{x:.2f}" for x in r["loadavg"]["before"])
    lines += ["", f"Measured by `benchmarks/pipeline_bench.py --publish` at commit `{st['commit'][:12]}` "
                  f"({st['date'][:10]}) on {st['cores']} cores, no GPU (a CPU Triton instance), load average "
                  f"{load} before, model version {st['model_version']}; figures in `docs/pipeline_bench.json`. "
                  "The model's random inputs have no overlapping windows, so of Triton's face-reader split only "
                  "the reader's optimisation for inference shows here; the video task's windows overlap."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "emoframe-bench")
    ap.add_argument("--publish", action="store_true",
                    help=f"write {PUBLISHED.relative_to(ROOT)} and the README table (refused on a dirty tree)")
    ap.add_argument("--render", action="store_true", help=f"only re-render the README table from {PUBLISHED.name}")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from published import publish_state, write_readme_block

    if a.render:
        write_readme_block(START, END, render(json.loads(PUBLISHED.read_text())))
        return
    if a.publish and a.skip_long:
        ap.error("--publish measures the long video too: leave out --skip-long")
    git = publish_state(a.publish)
    from emoframe.flows.run.label_archive import DEFAULT_MODEL_REPO
    from emoframe.workers.serving.triton_server import EmbeddedTriton

    load_before = os.getloadavg()
    a.workdir.mkdir(parents=True, exist_ok=True)
    short = make_video(a.workdir / f"bench_{a.minutes:g}min.mp4", a.minutes * 60)
    model_dir = max((p for p in (DEFAULT_MODEL_REPO / "expression_fusion").iterdir() if p.name.isdigit()),
                    key=lambda p: int(p.name))
    print(f"video: {short.name} {SIZE[0]}x{SIZE[1]} @ {FPS} fps, {a.minutes:g} min, AAC {SR} Hz stereo; "
          f"crop {PREPROCESSING.crop_size}px; torch threads {torch.get_num_threads()}")
    r: dict = {"settings": {"minutes": a.minutes, "long_minutes": None if a.skip_long else a.long_minutes,
                            "fps": FPS, "size": SIZE, "sample_rate": SR, "face_mode": "centred"}}
    d = r["decode"] = bench_decode(short)
    print(f"raw decord decode at {PREPROCESSING.crop_size}x{PREPROCESSING.crop_size}: {d['raw_decode_fps']:.0f} fps")
    print(f"decode + preprocessing (crops, masks, log-mel): {d['decode_preprocess_fps']:.0f} fps "
          f"(ratio {d['preprocess_ratio']:.2f}, target >= 0.8)")
    with EmbeddedTriton(DEFAULT_MODEL_REPO) as server:
        m = r["model"] = bench_model(model_dir, server.grpc_url)
        print(f"model, batch {m['batch_windows']} windows: in-process {m['inprocess_frames_per_s']:.0f} frames/s, "
              f"Triton {m['triton_frames_per_s']:.0f} frames/s (ratio {m['triton_ratio']:.2f}, target >= 0.7)")
        e = r["short"] = run_task(short, server.grpc_url, a.workdir / "out")
        print(f"end to end (one video task: decode, preprocess, Triton, voting, Parquet): "
              f"{e['frames'] / e['wall_s']:.0f} frames/s, realtime factor {e['frames'] / FPS / e['wall_s']:.1f}x, "
              f"peak RSS {e['peak_rss_mb']:.0f} MB ({a.minutes:g} min video)")
        if not a.skip_long:
            long = make_video(a.workdir / f"bench_{a.long_minutes:g}min.mp4", a.long_minutes * 60)
            e2 = r["long"] = run_task(long, server.grpc_url, a.workdir / "out")
            print(f"peak RSS {e2['peak_rss_mb']:.0f} MB ({a.long_minutes:g} min video) vs {e['peak_rss_mb']:.0f} MB "
                  f"({a.minutes:g} min): ratio {e2['peak_rss_mb'] / e['peak_rss_mb']:.2f} (target <= 1.2); "
                  f"{e2['frames'] / e2['wall_s']:.0f} frames/s")
    r["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    r["stamp"] = {"commit": git["head"], "dirty": git["dirty"], "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "cores": len(os.sched_getaffinity(0)), "model_version": model_dir.name}
    if a.publish:
        PUBLISHED.write_text(json.dumps(r, indent=2) + "\n")
        write_readme_block(START, END, render(r))
        print(f"wrote {PUBLISHED.relative_to(ROOT)} and the README table")


if __name__ == "__main__":
    main()
