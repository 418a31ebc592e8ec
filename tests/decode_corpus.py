"""Files whose streams start at different times: `python -m tests.decode_corpus DIR` writes them.

Run as its own process: PyAV's encoders fail once decord is loaded (see tests/test_bad_input.py).
Each track is a quiet 220 Hz tone with a 0.2 s chirp (600 to 3600 Hz: one sharp peak when the decoded
track is correlated with the one written) at a known time; TIMED says where each track starts on the
video's timeline (seconds from the first frame's presentation).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.media import write_timed

FPS = 15
SR = 16000
CHIRP = (600.0, 3600.0, 0.2)  # Hz from, Hz to, seconds
AUDIO_START_S = 2.0  # in "late audio.*": the track starts this long after the first frame
GAP = (1.024, 1.0)  # in "gap.mkv": after 1.024 s of track (16 AAC frames), 1 s of nothing, then the rest


@dataclass(frozen=True)
class Timed:
    frames: int
    seconds: float  # the track's length
    chirp_at: float | None  # in the track
    start_s: float  # where the track starts on the video's timeline (negative: before the first frame)
    sample_rate: int = SR

    @property
    def chirp_s(self) -> float:
        """When the chirp starts on the video's timeline."""
        return self.start_s + self.chirp_at


TIMED = {"late audio.mp4": Timed(60, 2.0, 1.0, AUDIO_START_S), "late audio.mkv": Timed(60, 2.0, 1.0, AUDIO_START_S),
         "late video.mp4": Timed(60, 5.0, 3.0, -1.0), "mpeg-ts.ts": Timed(60, 4.0, 2.0, 0.0),
         # the container starts Opus 7 ms early (its pre-skip); the decoder drops those samples
         "opus.webm": Timed(45, 3.0, 1.5, 0.0, 48000)}


def track(seconds: float, chirp_at: float | None, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    a = 0.1 * np.sin(2 * np.pi * 220 * t)
    if chirp_at is not None:
        f0, f1, dur = CHIRP
        u = t - chirp_at
        on = (u >= 0) & (u < dur)
        a[on] += 0.5 * np.sin(2 * np.pi * (f0 * u[on] + (f1 - f0) / (2 * dur) * u[on] ** 2))
    return a.astype(np.float32)


def build(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, x in TIMED.items():
        kw = dict(codec="libvpx-vp9", audio_codec="libopus") if name.endswith(".webm") else {}
        if name.endswith(".ts"):
            kw["fmt"] = "mpegts"
        write_timed(d / name, x.frames, FPS, audio=track(x.seconds, x.chirp_at, x.sample_rate),
                    sample_rate=x.sample_rate, audio_start_s=max(x.start_s, 0.0),
                    video_start_s=max(-x.start_s, 0.0), **kw)
    write_timed(d / "gap.mkv", 60, FPS, audio=track(2.9, None), audio_gap=GAP)
    write_timed(d / "edit list.mp4", 40, FPS, audio=track(2.0, None), video_start_s=-0.2)  # 3 frames hidden
    # the index first (faststart), cut just after it: 60 frames declared, none there
    fast = write_timed(d / "faststart.mp4", 60, FPS, audio=track(4.0, None), options={"movflags": "faststart"})
    data = fast.read_bytes()
    (d / "cut after index.mp4").write_bytes(data[: data.index(b"mdat") + 64])
    fast.unlink()


if __name__ == "__main__":
    build(Path(sys.argv[1]))
