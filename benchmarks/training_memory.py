"""Memory of training's data side on a feature cache larger than what it may hold: the cache opened
memory-mapped (what training/features.py does) against the same cache read into memory (the baseline, what
training did before), in separate processes, each loading every video and drawing training batches with the
real WindowSampler.

The cache is written in the real format (a folder of .npy files per video, training/features._write_cache)
with random crops: the crops' content does not change what is read. Measured per process: anonymous memory
(RssAnon: what the process itself holds and the system cannot reclaim) after the imports, after loading and
after the batches, and peak RSS, which also counts the cache's pages the memory maps touched (file pages the
system drops under pressure).

    python benchmarks/training_memory.py [--gb 3]            # print
    python benchmarks/training_memory.py --publish           # also write docs/training_memory.json (clean tree)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import publish_state, write_readme_block  # noqa: E402

OUT_JSON = ROOT / "docs" / "training_memory.json"
START, END = "<!-- training-memory:start -->", "<!-- training-memory:end -->"
FRAMES_PER_VIDEO = 9000  # 5 min at 30 frames/s
BATCHES, BATCH = 200, 32


def write_cache(folder: Path, gb: float) -> int:
    """Videos of random crops until the cache holds ``gb`` GB; returns the frame count."""
    import numpy as np

    from emoframe.training.features import _write_cache
    from emoframe.workers.spec.contract import PREPROCESSING as P

    rng = np.random.default_rng(0)
    per_frame = P.crop_size ** 2 * 3 + P.mel_frames * P.n_mels * 4 + 2
    n_videos = max(1, round(gb * 2**30 / (per_frame * FRAMES_PER_VIDEO)))
    for i in range(n_videos):
        n = FRAMES_PER_VIDEO
        arrays = {"face": rng.integers(0, 256, (n, P.crop_size, P.crop_size, 3), np.uint8),
                  "face_mask": np.ones(n, bool),
                  "mel": rng.standard_normal((n, P.mel_frames, P.n_mels), np.float32),
                  "audio_mask": np.ones(n, bool)}
        _write_cache(folder / f"video{i:03d}", arrays, 30.0)
        del arrays
    return n_videos * FRAMES_PER_VIDEO


_CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from emoframe.training.features import VideoArrays, _read_cache
from emoframe.training.train import WindowSampler
from emoframe.workers.spec.contract import PREPROCESSING as P, NUM_CLASSES

def anon_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return round(int(line.split()[1]) / 1024)

folder, mode = Path(sys.argv[1]), sys.argv[2]
imports = anon_mb()
t = time.perf_counter()
videos = []
for d in sorted(folder.iterdir()):
    arrays, fps = _read_cache(d)
    if mode == "in-memory":
        arrays = {k: np.array(v) for k, v in arrays.items()}
    n = len(arrays["face_mask"])
    videos.append(VideoArrays(d.name, fps, labels=np.arange(n) % NUM_CLASSES, **arrays))
loaded = time.perf_counter() - t
after_load = anon_mb()
# The reader's evidence is per frame and small (what the fusion model trains on); the sampler reads windows.
evidence = [np.zeros((len(v), NUM_CLASSES), np.float32) for v in videos]
sampler = WindowSampler(videos, evidence, P.window, seed=0)
t = time.perf_counter()
checksum = 0.0
for _ in range(int(sys.argv[3])):
    b = sampler.batch(int(sys.argv[4]))
    checksum += float(b["mel"].mean())
print(json.dumps({"anon_mb_imports": imports, "anon_mb_loaded": after_load, "anon_mb_trained": anon_mb(),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "load_s": round(loaded, 2), "batches_s": round(time.perf_counter() - t, 2)}))
"""


def run(folder: Path, mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, str(folder), mode, str(BATCHES), str(BATCH)],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         cwd=ROOT, timeout=1800)
    if res.returncode:
        sys.exit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def render(d: dict) -> str:
    mm, im = d["results"]["memory-mapped"], d["results"]["in-memory"]
    return (f"Measured by `benchmarks/training_memory.py` at {d['commit'][:7]} ({d['measured_at']}): on a cache of "
            f"{d['cache_mb']:,} MB ({d['frames']:,} frames), loading every video and drawing {d['batches']} batches "
            f"of {d['batch']} windows held {d['held_mb']['memory-mapped']} MB of the process's own memory "
            f"memory-mapped, against {d['held_mb']['in-memory']:,} MB read into memory as before "
            f"({mm['batches_s']} s against {im['batches_s']} s for the batches).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=3.0, help="size of the feature cache to build")
    ap.add_argument("--publish", action="store_true", help="write docs/training_memory.json")
    a = ap.parse_args()
    state = publish_state(a.publish)
    with tempfile.TemporaryDirectory(prefix="emoframe-trainmem-") as tmp:
        folder = Path(tmp) / "cache"
        folder.mkdir()
        frames = write_cache(folder, a.gb)
        size_mb = round(sum(p.stat().st_size for p in folder.rglob("*.npy")) / 2**20)
        print(f"cache: {frames} frames, {size_mb} MB", flush=True)
        results = {mode: run(folder, mode) for mode in ("memory-mapped", "in-memory")}
    for mode, r in results.items():
        print(f"{mode:>14}: anonymous memory {r['anon_mb_imports']} MB after imports, {r['anon_mb_loaded']} MB "
              f"loaded, {r['anon_mb_trained']} MB after {BATCHES} batches of {BATCH} windows; peak RSS "
              f"{r['peak_rss_mb']} MB; load {r['load_s']} s, batches {r['batches_s']} s")
    held = {m: r["anon_mb_trained"] - r["anon_mb_imports"] for m, r in results.items()}
    ratio = held["memory-mapped"] / held["in-memory"]
    print(f"memory held for the data (anonymous, beyond the imports): memory-mapped {held['memory-mapped']} MB, "
          f"in-memory {held['in-memory']} MB, ratio {ratio:.3f}")
    if a.publish:
        OUT_JSON.write_text(json.dumps({
            "commit": state["head"], "measured_at": time.strftime("%Y-%m-%d"), "cache_mb": size_mb,
            "frames": frames, "batches": BATCHES, "batch": BATCH, "results": results,
            "held_mb": held, "ratio_held": round(ratio, 3), "machine_ram_mb": round(
                resource.getpagesize() * __import__("os").sysconf("SC_PHYS_PAGES") / 2**20)}, indent=2) + "\n")
        write_readme_block(START, END, render(json.loads(OUT_JSON.read_text())))
        print(f"wrote {OUT_JSON.relative_to(ROOT)} and the README sentence")


if __name__ == "__main__":
    main()
