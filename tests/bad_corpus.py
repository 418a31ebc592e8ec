"""Writes the bad-input corpus: `python -m tests.bad_corpus DIR` prints {file: "labelled" | failure reason}.

Run as its own process: PyAV must not share a process with decord (see tests/test_bad_input.py).
"""

from __future__ import annotations

import json
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.media import rotate_quarter_turn, write_timed, write_video

FPS = 15
LATE_AUDIO_S = 2.0  # "late audio.*": the track starts this long after the first frame
FASTSTART_FRAMES = 60  # "truncated faststart.mp4" declares these; the cut keeps the first 60% of its bytes
VFR_PTS = [0, 1, 2, 4, 5, 8, 9, 10, 14, 15, 16, 20, 21, 22, 23, 30]  # in 1/30 s: gaps of 1 to 7 ticks


def build(d: Path) -> dict[str, str]:
    expect: dict[str, str] = {}

    def ok(name: str, n: int, **kw) -> None:
        write_video(d / name, n, FPS, **kw)
        expect[name] = "labelled"

    ok("h264 with audio.mp4", 30, audio_seconds=2.0)
    ok("no audio track.mp4", 30)
    ok("one frame.mp4", 1, audio_seconds=0.1)
    ok("hevc.mp4", 20, codec="libx265", audio_seconds=1.4)
    ok("vp9.webm", 20, codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000, audio_seconds=1.4)
    ok("mjpeg.avi", 20, codec="mjpeg", pix_fmt="yuvj420p", audio_codec="pcm_s16le", audio_seconds=1.4)
    ok("mpeg4.mkv", 20, codec="mpeg4", audio_seconds=1.4)
    ok("tiny 16x16.mp4", 20, size=(16, 16))
    ok("huge 3840x2160.mp4", 3, size=(3840, 2160))
    ok("variable frame rate.mp4", len(VFR_PTS), pts=VFR_PTS, time_base=Fraction(1, 30))
    ok("rotated.mp4", 20)
    rotate_quarter_turn(d / "rotated.mp4")  # a display matrix in the track header, as phones write
    ok("ünïcødé 表情 clip.mp4", 20, audio_seconds=1.4)
    (d / "sub").mkdir(parents=True, exist_ok=True)
    ok("sub/../dotdot.mp4", 20)
    (d / "zero bytes.mp4").write_bytes(b"")
    expect["zero bytes.mp4"] = "empty_file"
    whole = (d / "h264 with audio.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 3])  # the index (moov) is at the end: cut off
    expect["truncated.mp4"] = "truncated"
    tone = (0.2 * np.sin(np.arange(int(4 * 16000)) / 5)).astype(np.float32)
    fast = write_timed(d / "faststart.tmp", FASTSTART_FRAMES, FPS, audio=tone, fmt="mp4",
                       options={"movflags": "faststart"})  # the index first: a cut keeps what came before it
    (d / "truncated faststart.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size * 6 // 10])
    fast.unlink()
    expect["truncated faststart.mp4"] = "labelled"
    for name, kw in {"edit list.mp4": dict(video_start_s=-0.2),  # 3 frames before 0: hidden by an edit list
                     "mpeg-ts.ts": dict(fmt="mpegts"), "av1.mp4": dict(codec="libsvtav1"),
                     "late audio.mp4": dict(audio_start_s=LATE_AUDIO_S),
                     "late audio.mkv": dict(audio_start_s=LATE_AUDIO_S)}.items():
        write_timed(d / name, 40 if name == "edit list.mp4" else 45, FPS, audio=tone[: 2 * 16000], **kw)
        expect[name] = "labelled"
    plain = (d / "no audio track.mp4").read_bytes()
    entry = plain.find(b"avc1", plain.find(b"stsd"))  # the sample entry naming the codec: one FFmpeg lacks
    (d / "unknown codec.mp4").write_bytes(plain[:entry] + b"zzzz" + plain[entry + 4:])
    expect["unknown codec.mp4"] = "unsupported_codec"
    (d / "random bytes.mp4").write_bytes(np.random.default_rng(1).bytes(20000))
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    expect["random bytes.mp4"] = expect["text.mp4"] = "skipped: not_a_video"
    _entries_a_listing_meets(d, expect)
    with av.open(str(d / "audio only.mp4"), "w") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        tone = (0.2 * np.sin(np.arange(16000) / 5)).astype(np.float32)[None]
        for i in range(0, 16000, 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, i:i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    expect["audio only.mp4"] = "not_a_video"
    return expect


def _entries_a_listing_meets(d: Path, expect: dict[str, str]) -> None:
    """What sits in real archives beside the videos: each must end in the videos table, none twice, and the
    listing must end."""
    os.mkfifo(d / "pipe.mp4")  # reading it would block: never opened
    expect["pipe.mp4"] = "skipped: special_file"
    (d / "gone.mp4").symlink_to("deleted since.mp4")
    expect["gone.mp4"] = "skipped: dangling_link"
    (d / "loop.mp4").symlink_to("loop.mp4")
    expect["loop.mp4"] = "skipped: dangling_link"
    (d / "zz second name.mp4").symlink_to("h264 with audio.mp4")  # sorts after its target: the target is kept
    expect["zz second name.mp4"] = "skipped: duplicate"
    (d / ".hidden.mp4").write_bytes((d / "no audio track.mp4").read_bytes())
    expect[".hidden.mp4"] = "skipped: hidden"
    (d / "notes.txt").write_text("shot list\n")
    expect["notes.txt"] = "skipped: not_a_video"
    (d / "self").symlink_to(".")  # a loop: listed 41 times before, and two such never finished


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build(out)))
