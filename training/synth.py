"""A seeded synthetic audio-visual facial-expression set in ABAW (Aff-Wild2) layout, standing in for Aff-Wild2.

Layout: ``videos/<id>.mp4`` (face-centred H.264 video, AAC audio or none), ``annotations/<id>.txt`` (ABAW format, one
label per frame) and ``manifest.json`` (one record per video). Video i depends only on (seed, i).

The set is built so that fusion must beat either branch alone: Anger and Disgust look nearly the same but sound
different; Neutral/Sadness and Fear/Surprise sound nearly the same but look different. Faces go blank and audio goes
silent in stretches that the manifest records, so modality-missing handling can be checked against ground truth.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, TypedDict, cast

import av
import cv2
import numpy as np
from tqdm import tqdm

from emoframe.training.abaw_format import write_annotation
from emoframe.workers.spec.contract import CLASSES

Ranges = tuple[tuple[int, int], ...]  # [start, stop) frame ranges


@dataclass(frozen=True)
class SynthVideo:
    id: str
    index: int
    seed: int
    fps: int
    n_frames: int
    has_audio: bool
    sample_rate: int | None  # None when there is no audio track
    channels: int | None
    face_absent: Ranges  # blank frames (no face)
    silent: Ranges  # audio below silence level (empty when there is no audio track)
    occluded: Ranges  # face partly covered but visible
    identity: dict  # per-video face, voice and nuisance parameters

    @property
    def video(self) -> str:
        return f"videos/{self.id}.mp4"

    @property
    def annotation(self) -> str:
        return f"annotations/{self.id}.txt"


# Long-tailed class frequencies like Aff-Wild2's, keyed by name so the order of CLASSES is free.
_FREQ = {"Neutral": .30, "Happiness": .22, "Sadness": .12, "Anger": .09, "Surprise": .09, "Other": .10,
         "Fear": .04, "Disgust": .04}
CLASS_PROBS = np.array([_FREQ[c] for c in CLASSES]) / sum(_FREQ.values())
FPS_CHOICES = (12, 15, 20, 25)
SAMPLE_RATES = (16000, 22050, 44100, 48000)
SEGMENT_SECONDS = (0.5, 6.0)
STRETCH_SECONDS = (0.3, 3.0)

# Face: offsets from the neutral face. Anger and Disgust differ only by a 1-px nose wrinkle (hard by face).
_NEUTRAL_FACE = dict(eye_open=1.0, brow_raise=0.0, brow_slant=0.0, brow_pinch=0.0, brow_arch=0.15, brow_asym=0.0,
                     mouth_width=0.45, mouth_curve=0.0, mouth_open=0.0, mouth_skew=0.0, wrinkle=0.0)
_FROWN = dict(eye_open=0.65, brow_raise=-0.12, brow_slant=0.45, brow_pinch=0.12, brow_arch=0.0, mouth_width=0.3,
              mouth_curve=-0.03)
_FACE = {
    "Neutral": {},
    "Anger": _FROWN,
    "Disgust": {**_FROWN, "wrinkle": 1.0},
    "Fear": dict(eye_open=2.0, brow_raise=0.3, brow_slant=-0.35, brow_pinch=0.2, brow_arch=0.0, mouth_width=0.8,
                 mouth_curve=-0.04, mouth_open=0.12),
    "Happiness": dict(eye_open=0.7, brow_raise=0.05, mouth_width=0.62, mouth_curve=0.35, mouth_open=0.1),
    "Sadness": dict(eye_open=0.75, brow_slant=-0.55, mouth_width=0.42, mouth_curve=-0.3),
    "Surprise": dict(eye_open=1.6, brow_raise=0.45, brow_arch=0.6, mouth_width=0.2, mouth_open=0.32),
    "Other": dict(brow_asym=0.35, mouth_skew=0.2, mouth_curve=0.05, mouth_width=0.4),
}
_FACE_KEYS = tuple(_NEUTRAL_FACE)
_FACE_TABLE = np.array([[{**_NEUTRAL_FACE, **_FACE[c]}[k] for k in _FACE_KEYS] for c in CLASSES], np.float32)


class Voice(NamedTuple):
    f0: float  # Hz, before the per-video scale
    harmonics: int
    decay: float  # harmonic k has amplitude k**-decay: low decay = harsh, bright
    am_rate: float  # Hz, amplitude modulation (tremolo)
    am_depth: float
    breath: float  # share of band-limited noise in the voice
    band: tuple[float, float]  # noise band centre and width, Hz
    glide: float  # relative pitch change over one syllable


# Neutral/Sadness and Fear/Surprise are near-identical (hard by sound); Anger and Disgust are far apart.
_VOICE = {
    "Neutral": Voice(140, 6, 1.2, 4.0, 0.3, 0.10, (3000, 2500), 0.0),
    "Sadness": Voice(134, 6, 1.2, 3.7, 0.3, 0.10, (3000, 2500), 0.0),
    "Fear": Voice(300, 5, 1.0, 10.0, 0.5, 0.25, (3500, 2500), 0.03),
    "Surprise": Voice(310, 5, 1.0, 10.5, 0.5, 0.25, (3500, 2500), 0.03),
    "Anger": Voice(100, 18, 0.45, 6.0, 0.2, 0.05, (2000, 2000), 0.0),
    "Disgust": Voice(180, 2, 2.0, 5.0, 0.3, 0.85, (1000, 500), 0.0),
    "Happiness": Voice(220, 8, 0.8, 12.0, 0.6, 0.05, (4000, 2500), 0.12),
    "Other": Voice(260, 4, 1.5, 5.0, 0.3, 0.10, (3000, 2500), -0.45),
}
_VOICES = [_VOICE[c] for c in CLASSES]


def sample_segments(rng: np.random.Generator, n_frames: int, fps: float) -> list[tuple[int, int, int]]:
    """(class, start, stop) segments covering n_frames; only the last one may be cut short by the video end."""
    lo, hi = math.ceil(SEGMENT_SECONDS[0] * fps), math.floor(SEGMENT_SECONDS[1] * fps)
    segments, start = [], 0
    while start < n_frames:
        length = int(np.clip(round(rng.lognormal(math.log(1.8), 0.6) * fps), lo, hi))
        cls = int(rng.choice(len(CLASSES), p=CLASS_PROBS))
        segments.append((cls, start, min(start + length, n_frames)))
        start += length
    return segments


def _labels(segments: list[tuple[int, int, int]], n_frames: int) -> np.ndarray:
    labels = np.empty(n_frames, np.int64)
    for cls, start, stop in segments:
        labels[start:stop] = cls
    return labels


def sample_labels(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """Per-frame class ids (int64) from ``sample_segments``."""
    return _labels(sample_segments(rng, n_frames, fps), n_frames)


def _stretches(rng: np.random.Generator, n_frames: int, fps: float, fraction: float,
               avoid: Ranges = ()) -> Ranges:
    """Non-overlapping [start, stop) stretches of 0.3-3 s covering about ``fraction`` of the frames."""
    lo, hi = max(2, math.ceil(STRETCH_SECONDS[0] * fps)), math.floor(STRETCH_SECONDS[1] * fps)
    free = np.ones(n_frames, bool)
    for a, b in avoid:
        free[a:b] = False
    out, covered, target = [], 0, fraction * n_frames
    for _ in range(200):  # bounded: short videos may not fit the target
        if covered >= target:
            break
        length = int(min(rng.integers(lo, hi + 1), max(lo, round(target - covered))))
        if length >= n_frames:
            break
        start = int(rng.integers(0, n_frames - length + 1))
        if free[max(0, start - lo):start + length + lo].all():  # keep a gap so stretches stay separate
            free[start:start + length] = False
            out.append((start, start + length))
            covered += length
    return tuple(sorted(out))


def _slow(rng: np.random.Generator, n: int, fps: float, period: tuple[float, float] = (4.0, 15.0)) -> np.ndarray:
    """A smooth zero-mean wander in about [-1, 1]: two slow sinusoids with random periods and phases."""
    t = np.arange(n) / fps
    waves = [np.sin(2 * np.pi * t / rng.uniform(*period) + rng.uniform(0, 2 * np.pi)) for _ in range(2)]
    return (waves[0] + waves[1]) / 2


def _identity(rng: np.random.Generator) -> dict:
    skin_t = rng.uniform()
    skin = (1 - skin_t) * np.array([240, 205, 180]) + skin_t * np.array([95, 62, 45])
    bg = [rng.uniform(0, 255, 3) for _ in range(2)]
    # Keep the background away from the skin tone so the face stands out (face frames must have high contrast).
    while any(abs(c.mean() - skin.mean()) < 50 for c in bg):
        bg = [rng.uniform(0, 255, 3) for _ in range(2)]
    hair = rng.uniform(0.1, 0.6) * np.array([110, 80, 60]) * rng.uniform(0.8, 1.2, 3)  # black to brown
    return dict(
        skin=skin.round().tolist(), hair=hair.round().tolist(),
        background=[c.round().tolist() for c in bg], gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        face_width=float(rng.uniform(0.70, 0.82)), face_height=float(rng.uniform(0.86, 0.96)),
        eye_spacing=float(rng.uniform(0.32, 0.42)), thickness=int(rng.integers(1, 3)),
        scale=float(rng.uniform(0.9, 1.05)), noise_sigma=float(rng.uniform(1, 4)), crf=int(rng.integers(18, 33)),
        f0_scale=float(rng.uniform(0.85, 1.15)), loudness_dbfs=float(rng.uniform(-20, -14)),
        noise_dbfs=float(rng.uniform(-58, -48)),
    )


def _face_params(rng: np.random.Generator, segments: list, n: int, fps: float) -> np.ndarray:
    """Per-frame face parameters: class targets at a random per-segment intensity, eased over ~0.15 s, plus blinks."""
    neutral = _FACE_TABLE[CLASSES.index("Neutral")]
    params = np.empty((n, len(_FACE_KEYS)), np.float32)
    for cls, start, stop in segments:
        params[start:stop] = neutral + rng.uniform(0.7, 1.0) * (_FACE_TABLE[cls] - neutral)
    k = max(1, round(0.15 * fps))
    padded = np.pad(params, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    params = np.stack([np.convolve(col, np.ones(k) / k, mode="valid") for col in padded.T], axis=1)
    blink = _FACE_KEYS.index("eye_open")
    for start in np.cumsum(rng.uniform(2, 5, size=int(n / fps / 2) + 1) * fps).astype(int):
        params[start:start + max(1, round(0.1 * fps)), blink] = 0.1
    return params


class _Smooth(TypedDict):
    """cv2 drawing keywords (antialiased, sub-pixel): typed, so ``**aa`` cannot seem to fill fillPoly's offset."""

    lineType: int
    shift: int


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points * 16).astype(np.int32)  # cv2 fixed point, shift=4: sub-pixel motion


def _draw_face(img: np.ndarray, p: dict, cx: float, cy: float, a: float, b: float, ident: dict, th: int) -> None:
    """Draw one face (RGB, in place) centred at (cx, cy) with half-axes (a, b) from parameters p."""
    aa: _Smooth = dict(lineType=cv2.LINE_AA, shift=4)
    skin, hair = tuple(ident["skin"]), tuple(ident["hair"])
    dark = tuple(0.35 * np.array(ident["skin"]))

    def ell(centre: tuple, axes: tuple, colour: tuple, thickness: int) -> None:
        cv2.ellipse(img, tuple(_pts(np.array(centre))), tuple(_pts(np.array(axes))), 0, 0, 360, colour, thickness, **aa)

    ell((cx, cy - 0.25 * b), (1.06 * a, 0.85 * b), hair, -1)
    ell((cx, cy), (a, b), skin, -1)
    eye_y, ew = cy - 0.18 * b, 0.16 * a
    eh = max(0.6, 0.07 * b * p["eye_open"])
    for side in (-1, 1):
        ex = cx + side * ident["eye_spacing"] * a
        ell((ex, eye_y), (ew, eh), (245, 245, 240), -1)
        ell((ex, eye_y), (min(0.5 * ew, eh), min(0.5 * ew, eh)), (30, 25, 20), -1)
        # Brow: inner end lowered by slant (frown) or raised (sad, fear); pinch pulls inner ends together.
        brow_y = eye_y - b * (0.15 + 0.2 * p["brow_raise"] + (0.2 * p["brow_asym"] if side > 0 else 0))
        inner = np.array([cx + side * a * (ident["eye_spacing"] - 0.18 - 0.12 * p["brow_pinch"]),
                          brow_y + 0.12 * b * p["brow_slant"]])
        outer = np.array([cx + side * a * (ident["eye_spacing"] + 0.22), brow_y - 0.04 * b * p["brow_slant"]])
        t = np.linspace(0, 1, 7)[:, None]
        brow = (1 - t) * inner + t * outer - [0, 1] * (0.4 * b * p["brow_arch"] * t * (1 - t))
        cv2.polylines(img, [_pts(brow)], False, hair, th + 1, **aa)
    nose = np.array([[cx, eye_y + 0.05 * b], [cx + 0.05 * a, cy + 0.18 * b], [cx - 0.04 * a, cy + 0.2 * b]])
    cv2.polylines(img, [_pts(nose)], False, dark, th, **aa)
    if p["wrinkle"] > 0.5:  # the one visual difference between Disgust and Anger
        y = eye_y + 0.12 * b
        cv2.line(img, tuple(_pts(np.array([cx - 0.08 * a, y]))), tuple(_pts(np.array([cx + 0.08 * a, y]))),
                 dark, 1, **aa)
    # Mouth: a centre curve (smile > 0 lifts corners, skew tilts it) opened into a filled shape when open > 0.
    t = np.linspace(-1, 1, 15)
    mx, my, w = cx, cy + 0.5 * b, p["mouth_width"] * a
    yc = my - 0.5 * b * p["mouth_curve"] * (t ** 2 - 0.3) - 0.5 * b * p["mouth_skew"] * t
    h = p["mouth_open"] * b * np.sqrt(1 - t ** 2)
    lips = (150, 60, 60) if skin[0] > 150 else (90, 35, 35)
    if p["mouth_open"] * b > 1.5:
        xs = mx + w * t
        outline = np.concatenate([np.stack([xs, yc - 0.4 * h], 1), np.stack([xs, yc + 0.6 * h], 1)[::-1]])
        cv2.fillPoly(img, [_pts(outline)], (40, 10, 15), **aa)
        cv2.polylines(img, [_pts(outline)], True, lips, th, **aa)
    else:
        cv2.polylines(img, [_pts(np.stack([mx + w * t, yc], 1))], False, lips, th + 1, **aa)


def _render_frames(rng: np.random.Generator, ident: dict, segments: list, n: int, fps: float, size: int,
                   face_absent: Ranges, occluded: Ranges):
    """Yield RGB uint8 frames: face with nuisance (drift, jitter, scale, lighting, noise), blank, or occluded."""
    params = _face_params(rng, segments, n, fps)
    drift = np.stack([_slow(rng, n, fps) for _ in range(2)], 1) * rng.uniform(1.5, 4.0) * size / 96
    jitter = rng.normal(0, 0.4 * size / 96, (n, 2))
    scale = np.clip(ident["scale"] * (1 + 0.05 * _slow(rng, n, fps)), 0.85, 1.1)
    gain, offset = 1 + 0.15 * _slow(rng, n, fps), 20 * _slow(rng, n, fps)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ramp = (np.cos(ident["gradient_angle"]) * xx + np.sin(ident["gradient_angle"]) * yy)
    ramp = ((ramp - ramp.min()) / np.ptp(ramp))[..., None]
    c0, c1 = (np.array(c, np.float32) for c in ident["background"])
    background = ((1 - ramp) * c0 + ramp * c1).astype(np.uint8)
    covered = {}
    blank_level = {i: level for (s, e), level in zip(face_absent, rng.uniform(10, 140, len(face_absent)))
                   for i in range(s, e)}
    for start, stop in occluded:  # a bar or a blob over up to a third of the face, fixed for the stretch
        blob = bool(rng.integers(0, 2))
        shape = (rng.uniform(-0.4, 0.4, 2), rng.uniform(0.35, 0.55, 2) if blob else rng.uniform(0.25, 0.5),
                 tuple(rng.uniform(20, 235, 3).tolist()))
        covered.update({i: (blob, shape) for i in range(start, stop)})
    for i in range(n):
        noise = rng.standard_normal((size, size, 3), dtype=np.float32) * ident["noise_sigma"]
        if i in blank_level:
            yield np.clip(blank_level[i] + noise, 0, 255).astype(np.uint8)
            continue
        img = background.copy()
        cx, cy = size / 2 + drift[i, 0] + jitter[i, 0], size / 2 + drift[i, 1] + jitter[i, 1]
        a, b = ident["face_width"] * scale[i] * size / 2, ident["face_height"] * scale[i] * size / 2
        th = max(1, round(ident["thickness"] * size / 96))
        _draw_face(img, dict(zip(_FACE_KEYS, params[i])), cx, cy, a, b, ident, th)
        if i in covered:
            blob, (pos, ext, colour) = covered[i]
            ox, oy = cx + pos[0] * a, cy + pos[1] * b
            if blob:
                axes = cast(np.ndarray, ext)  # a blob's two half-axes (a bar's ext: its one height)
                cv2.ellipse(img, (round(ox), round(oy)), (round(axes[0] * a), round(axes[1] * b)), 0, 0, 360,
                            colour, -1)
            else:
                cv2.rectangle(img, (0, round(oy - ext * b / 2)), (size, round(oy + ext * b / 2)), colour, -1)
        yield np.clip(img * gain[i] + offset[i] + noise, 0, 255).astype(np.uint8)


def _band_noise(rng: np.random.Generator, n: int, sr: int, band: tuple[float, float]) -> np.ndarray:
    """Unit-RMS Gaussian noise with a Gaussian-shaped spectral band (breath, nasal hiss)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    x = np.fft.irfft(spec * np.exp(-0.5 * ((freqs - band[0]) / (band[1] / 2)) ** 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _voice(rng: np.random.Generator, v: Voice, n: int, sr: int, f0_scale: float) -> np.ndarray:
    """One segment of intermittent voice: syllables of 80-300 ms with gaps of 20-120 ms (always < 150 ms)."""
    f0, env = np.full(n, v.f0 * f0_scale), np.zeros(n)
    ramp = max(1, int(0.01 * sr))
    t = 0
    while t < n:
        length = min(int(rng.uniform(0.08, 0.30) * sr), n - t)
        pitch = v.f0 * f0_scale * rng.uniform(0.97, 1.03)
        f0[t:t + length] = pitch * (1 + v.glide * np.linspace(0, 1, length))
        r = min(ramp, length // 2)
        shape = np.minimum(1.0, np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)) / max(r, 1))
        env[t:t + length] = shape * 10 ** (rng.uniform(-2, 2) / 20)  # ramped edges avoid clicks; loudness jitter
        t += length + int(rng.uniform(0.02, 0.12) * sr)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(k ** -v.decay * np.sin(k * phase) for k in range(1, v.harmonics + 1) if k * f0.max() < 0.45 * sr)
    tone /= np.sqrt(np.mean(tone ** 2)) + 1e-12
    voice = np.sqrt(1 - v.breath ** 2) * tone + v.breath * _band_noise(rng, n, sr, v.band)
    am = 1 - v.am_depth * (0.5 + 0.5 * np.sin(2 * np.pi * v.am_rate * np.arange(n) / sr + rng.uniform(0, 6.3)))
    return voice * am * env


def _render_audio(rng: np.random.Generator, ident: dict, segments: list, n_samples: int, sr: int, channels: int,
                  fps: float, silent: Ranges) -> np.ndarray:
    """(channels, n_samples) float32 audio: class voices over background noise, muted in the silent stretches."""
    def to_sample(frame: int) -> int:
        return min(n_samples, round(frame / fps * sr))
    voice = np.zeros(n_samples)
    for cls, start, stop in segments:
        a, b = to_sample(start), to_sample(stop)
        if b > a:
            voice[a:b] = _voice(rng, _VOICES[cls], b - a, sr, ident["f0_scale"])
    voice *= 10 ** (ident["loudness_dbfs"] / 20)
    noise_level = np.full(n_samples, 10 ** (ident["noise_dbfs"] / 20))
    for start, stop in silent:  # digital silence or near silence (-75..-65 dBFS), both well below -50
        a, b = to_sample(start), to_sample(stop)
        voice[a:b] = 0
        noise_level[a:b] = 0 if rng.uniform() < 0.5 else 10 ** (rng.uniform(-75, -65) / 20)
    pan = rng.uniform(0.8, 1.0, channels)
    out = pan[:, None] * voice + noise_level * rng.standard_normal((channels, n_samples))
    return np.clip(out, -1, 1).astype(np.float32)


def _encode(path: Path, frames, fps: int, size: int, crf: int, audio: np.ndarray | None, sr: int) -> None:
    """Mux H.264 (yuv420p) video and AAC audio into an MP4, interleaving audio with video by time."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        # One thread and no macroblock-tree: with either, x264 here gives different bytes for the same frames.
        vs.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        if audio is not None:
            as_ = out.add_stream("aac", rate=sr, layout="mono" if audio.shape[0] == 1 else "stereo")
            as_.options = {"aac_coder": "fast"}  # the default coder is twice as slow: the encoder dominated run time
        apos, chunk = 0, 1024
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
            while audio is not None and apos < min(audio.shape[1], round((i + 1) / fps * sr)):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, apos:apos + chunk]), format="fltp",
                                                layout=as_.layout.name)
                af.sample_rate, af.pts, af.time_base = sr, apos, Fraction(1, sr)
                out.mux(as_.encode(af))
                apos += chunk
        out.mux(vs.encode(None))
        if audio is not None:
            out.mux(as_.encode(None))


def make_video(out_dir: Path, seed: int, index: int, *, min_seconds: float = 20.0, max_seconds: float = 40.0,
               size: int = 96, no_audio_fraction: float = 0.15) -> SynthVideo:
    """Write video ``index`` of set ``seed`` (MP4 + annotation) and return its record."""
    rng = np.random.default_rng([seed, index])
    label_rng, face_rng, audio_rng = rng.spawn(3)  # independent streams: editing one cue leaves the others alone
    fps = int(rng.choice(FPS_CHOICES))
    n_frames = max(1, round(rng.uniform(min_seconds, max_seconds) * fps))
    has_audio = bool(rng.uniform() >= no_audio_fraction)
    sr, channels = int(rng.choice(SAMPLE_RATES)), int(rng.integers(1, 3))  # drawn even without audio: stable stream
    ident = _identity(rng)
    face_absent = _stretches(rng, n_frames, fps, rng.uniform(0.10, 0.20))
    occluded = _stretches(rng, n_frames, fps, rng.uniform(0.0, 0.10), avoid=face_absent)
    silent = _stretches(rng, n_frames, fps, rng.uniform(0.10, 0.20)) if has_audio else ()
    segments = sample_segments(label_rng, n_frames, fps)
    vid = f"synth_{seed}_{index:04d}"
    audio = (_render_audio(audio_rng, ident, segments, round(n_frames / fps * sr), sr, channels, fps, silent)
             if has_audio else None)
    frames = _render_frames(face_rng, ident, segments, n_frames, fps, size, face_absent, occluded)
    _encode(out_dir / "videos" / f"{vid}.mp4", frames, fps, size, ident["crf"], audio, sr)
    write_annotation(out_dir / "annotations" / f"{vid}.txt", _labels(segments, n_frames))
    return SynthVideo(id=vid, index=index, seed=seed, fps=fps, n_frames=n_frames, has_audio=has_audio,
                      sample_rate=sr if has_audio else None, channels=channels if has_audio else None,
                      face_absent=face_absent, silent=silent, occluded=occluded, identity=ident)


def generate(out_dir: Path, n_videos: int, seed: int, *, min_seconds: float = 20.0, max_seconds: float = 40.0,
             size: int = 96, no_audio_fraction: float = 0.15, progress: bool = False) -> list[SynthVideo]:
    """Write ``n_videos`` synthetic videos, their ABAW annotations and ``manifest.json`` under ``out_dir``."""
    if size % 2 or size < 32:
        raise ValueError(f"size must be even (yuv420p) and at least 32, got {size}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    videos = [make_video(out_dir, seed, i, min_seconds=min_seconds, max_seconds=max_seconds, size=size,
                         no_audio_fraction=no_audio_fraction)
              for i in tqdm(range(n_videos), desc="synth videos", disable=not progress)]
    keep = {v.id for v in videos}
    for stale in [*(out_dir / "videos").glob("synth_*.mp4"), *(out_dir / "annotations").glob("synth_*.txt")]:
        if stale.stem not in keep:
            stale.unlink()  # left by an earlier, larger or other-seed run: readers list these folders
    (out_dir / "manifest.json").write_text(json.dumps([dataclasses.asdict(v) for v in videos], indent=1))
    return videos


def load_manifest(out_dir: Path) -> list[SynthVideo]:
    """Read ``manifest.json`` back into records (JSON lists become the tuples the dataclass holds)."""
    records = json.loads((Path(out_dir) / "manifest.json").read_text())
    ranges = ("face_absent", "silent", "occluded")
    return [SynthVideo(**{**r, **{k: tuple(tuple(x) for x in r[k]) for k in ranges}}) for r in records]
