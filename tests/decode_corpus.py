"""Files whose streams start at different times: `python -m tests.decode_corpus DIR` writes them.

Run as its own process: PyAV's encoders fail once decord is loaded (see tests/test_bad_input.py).
Every track has a 0.2 s 2 kHz burst over a quiet 220 Hz tone; BURST_S says where each burst is on the
video's timeline (seconds from the first frame's presentation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.media import write_timed

FPS = 15
SR = 16000
BURST = (2000.0, 0.2)  # Hz, seconds
AUDIO_START_S = 2.0  # in "late audio.*": the track starts this long after the first frame
GAP = (1.024, 1.0)  # in "gap.mkv": after 1.024 s of track (16 AAC frames), 1 s of nothing, then the rest
# file -> (frames, burst start on the video's timeline)
FILES = {"late audio.mp4": (60, 3.0), "late audio.mkv": (60, 3.0), "late video.mp4": (60, 2.0),
         "mpeg-ts.ts": (60, 2.0), "gap.mkv": (60, None)}


def track(seconds: float, burst_at: float | None) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    a = 0.1 * np.sin(2 * np.pi * 220 * t)
    if burst_at is not None:
        on = (t >= burst_at) & (t < burst_at + BURST[1])
        a[on] += 0.5 * np.sin(2 * np.pi * BURST[0] * t[on])
    return a.astype(np.float32)


def build(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for ext in ("mp4", "mkv"):  # the track starts 2 s after the video; the burst 1 s into the track
        write_timed(d / f"late audio.{ext}", 60, FPS, audio=track(2.0, 1.0), audio_start_s=AUDIO_START_S)
    # the video starts 1 s after the track; the burst at 3 s on the track's clock is 2 s into the video
    write_timed(d / "late video.mp4", 60, FPS, audio=track(5.0, 3.0), video_start_s=1.0)
    write_timed(d / "mpeg-ts.ts", 60, FPS, audio=track(4.0, 2.0), fmt="mpegts")
    write_timed(d / "gap.mkv", 60, FPS, audio=track(2.9, None), audio_gap=GAP)
    write_timed(d / "edit list.mp4", 40, FPS, audio=track(2.0, None), video_start_s=-0.2)  # 3 frames hidden
    # the index first (faststart), cut just after it: 60 frames declared, none there
    fast = write_timed(d / "faststart.mp4", 60, FPS, audio=track(4.0, None), options={"movflags": "faststart"})
    data = fast.read_bytes()
    (d / "cut after index.mp4").write_bytes(data[: data.index(b"mdat") + 64])
    fast.unlink()


if __name__ == "__main__":
    build(Path(sys.argv[1]))
