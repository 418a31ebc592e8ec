"""Shared preprocessing: decoded frames and audio -> model inputs (face crops + masks, log-mel + masks).

Training and serving both call ``iter_video_inputs``; there is no second implementation, so there is
no training/serving skew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch
import torchaudio

from workers.contract import PREPROCESSING, Preprocessing
from workers.decode import AudioStream, Decoder, DecordDecoder, VideoInfo
from workers.errors import BadInputError

FaceMode = Literal["centred", "detect"]
DETECT_MAX_SIDE = 360  # frames are decoded at most this large for face detection (speed; Haar works well here)
CROP_MARGIN = 0.15  # context kept around a detected face box, as a fraction of its size


@dataclass
class InputChunk:
    """Model inputs for frames [start, start + n) of one video."""

    start: int
    face: np.ndarray  # uint8 [n, crop, crop, 3]
    face_mask: np.ndarray  # bool [n]
    mel: np.ndarray  # float32 [n, mel_frames, n_mels]
    audio_mask: np.ndarray  # bool [n]
    n_faces: np.ndarray  # int16 [n]; 1 in centred mode when the crop is not blank
    times: np.ndarray | None = None  # float64 [n]: each frame's start time in seconds (None = index / fps)

    def __len__(self) -> int:
        return len(self.face_mask)


# ---- visual --------------------------------------------------------------------------------------


def blank_mask(crops: np.ndarray, p: Preprocessing = PREPROCESSING) -> np.ndarray:
    """True where a crop has content. A blank (uniform) crop means the face is missing."""
    grey = crops.astype(np.float32).mean(axis=-1)
    return grey.reshape(len(crops), -1).std(axis=1) >= p.blank_std


@lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    # The cascade ships inside the opencv wheel: nothing is downloaded at run time.
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise RuntimeError(f"OpenCV face cascade could not be loaded from {path}")
    return clf


def detect_faces(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in an RGB uint8 frame, largest first."""
    grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    min_side = max(24, min(grey.shape) // 12)
    boxes = _haar().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: b[2] * b[3], reverse=True)


def crop_face(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Square crop around ``box`` with a margin, clamped to the frame, resized to size x size."""
    x, y, w, h = box
    side = int(max(w, h) * (1 + 2 * CROP_MARGIN))
    cx, cy = x + w // 2, y + h // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    x1, y1 = min(frame.shape[1], x0 + side), min(frame.shape[0], y0 + side)
    return cv2.resize(frame[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def detect_and_crop(frames: np.ndarray, p: Preprocessing = PREPROCESSING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw footage: the largest detected face per frame. Returns crops, face_mask, n_faces."""
    n = len(frames)
    crops = np.zeros((n, p.crop_size, p.crop_size, 3), np.uint8)
    n_faces = np.zeros(n, np.int16)
    for i, frame in enumerate(frames):
        boxes = detect_faces(frame)
        n_faces[i] = len(boxes)
        if boxes:
            crops[i] = crop_face(frame, boxes[0], p.crop_size)
    return crops, n_faces > 0, n_faces


def detect_size(info: VideoInfo) -> tuple[int, int]:
    scale = min(1.0, DETECT_MAX_SIDE / max(info.width, info.height))
    return max(2, int(round(info.width * scale))), max(2, int(round(info.height * scale)))


# ---- audio ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _mel(p: Preprocessing) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels, center=False, power=2.0
    )


def frame_midpoints(times: np.ndarray, fps: float) -> np.ndarray:
    """Mid-time of each frame from its start time; the last frame lasts 1 / fps."""
    ends = np.append(times[1:], times[-1] + 1.0 / fps) if len(times) else times
    return (times + ends) / 2.0


def audio_features(
    samples: np.ndarray | AudioStream | None, fps: float, start: int, n: int, p: Preprocessing = PREPROCESSING,
    mid_times: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel and audio-present mask for frames [start, start + n).

    Frame i gets ``audio_context`` samples centred on its mid-time (``mid_times`` when the decoder gave
    frame timestamps, else (i + 0.5) / fps), zero-padded past the ends of the track (an audio track
    shorter than the video reads as silence there).
    """
    mel = np.zeros((n, p.mel_frames, p.n_mels), np.float32)
    if samples is None or n == 0:
        return mel, np.zeros(n, bool)
    ctx = p.audio_context
    mids = mid_times if mid_times is not None else (np.arange(start, start + n) + 0.5) / fps
    centres = np.round(mids * p.sample_rate).astype(np.int64)
    lo = int(centres[0]) - ctx // 2
    hi = int(centres[-1]) - ctx // 2 + ctx
    if isinstance(samples, AudioStream):
        seg = samples.get(lo, hi)
    else:
        seg = np.zeros(hi - lo, np.float32)
        a, b = max(lo, 0), min(hi, len(samples))
        if b > a:
            seg[a - lo : b - lo] = samples[a:b]
    offsets = centres - ctx // 2 - lo
    windows = np.lib.stride_tricks.sliding_window_view(seg, ctx)[offsets]  # [n, ctx] view, no copy
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
    present = 20.0 * np.log10(rms + 1e-12) > p.silence_dbfs
    with torch.inference_mode():
        spec = _mel(p)(torch.from_numpy(np.ascontiguousarray(windows)))  # [n, n_mels, mel_frames]
        logmel = torch.log(spec + p.log_offset).transpose(1, 2)
    mel[:] = logmel.numpy()
    return mel, present


# ---- one video -----------------------------------------------------------------------------------


def iter_video_inputs(
    path: str,
    info: VideoInfo,
    *,
    face_mode: FaceMode = "centred",
    chunk: int = 256,
    decoder: Decoder | None = None,
    p: Preprocessing = PREPROCESSING,
) -> Iterator[InputChunk]:
    """Stream one video's model inputs in chunks of at most ``chunk`` frames, covering every frame."""
    decoder = decoder or DecordDecoder()
    samples = decoder.read_audio(path, p.sample_rate) if info.has_audio else None
    times = decoder.frame_times(path)
    if len(times) != info.n_frames:
        raise BadInputError("frame_count_mismatch", f"{len(times)} frame timestamps for {info.n_frames} frames")
    mids = frame_midpoints(times, info.fps)
    if face_mode == "centred":
        size = (p.crop_size, p.crop_size)
    elif face_mode == "detect":
        size = detect_size(info)
    else:
        raise ValueError(f"face_mode must be 'centred' or 'detect', not {face_mode!r}")
    start = 0
    for frames in decoder.iter_frames(path, size[0], size[1], chunk):
        n = len(frames)
        if face_mode == "centred":
            face = np.ascontiguousarray(frames)
            face_mask = blank_mask(face, p)
            n_faces = face_mask.astype(np.int16)
        else:
            face, face_mask, n_faces = detect_and_crop(frames, p)
        mel, audio_mask = audio_features(samples, info.fps, start, n, p, mids[start : start + n])
        if isinstance(samples, AudioStream) and start + n < len(mids):  # later frames need nothing earlier
            samples.release(int(round(mids[start + n] * p.sample_rate)) - p.audio_context)
        yield InputChunk(start, face, face_mask, mel, audio_mask, n_faces, times[start : start + n])
        start += n
