"""Shared preprocessing: decoded frames and audio -> model inputs (face crops + masks, log-mel + masks).

Training and serving both call ``iter_video_inputs``; there is no second implementation, so there is
no training/serving skew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np

from emoframe.workers.spec.contract import FACE_MODES, PREPROCESSING, FaceMode, Preprocessing
from emoframe.workers.media.decode import AudioStream, Decoder, VideoDecoder, VideoInfo
from emoframe.workers.spec.errors import BadInputError, Reason
from emoframe.workers.media.faces.align import align_faces, model_face
from emoframe.workers.media.faces.detector import MTCNN, Faces
from emoframe.workers.media.faces.tracker import FaceTracker, TrackerSettings

DETECT_MAX_SIDE = 640  # raw footage is decoded at most this large: enough for 112 px aligned crops, 2.5x faster


@dataclass
class FaceRows:
    """The faces of a chunk's frames: one row per face and frame, ordered by frame then track."""

    frame: np.ndarray  # int32 [m]: frame index within the chunk
    track: np.ndarray  # int32 [m]: track id, stable while the face stays in view
    present: np.ndarray  # bool [m]: False for a blank frame of face-centred input (the face is missing)
    box: np.ndarray  # float32 [m, 4]: x, y, width, height in pixels of the decoded source frame
    score: np.ndarray  # float32 [m]: detector's face probability (NaN for face-centred input)
    face: np.ndarray  # uint8 [m, crop, crop, 3]: the model's face tensor, derived from the aligned crop

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class InputChunk:
    """Model inputs for frames [start, start + n) of one video: per-frame audio, and the faces of each frame."""

    start: int
    mel: np.ndarray  # float32 [n, mel_frames, n_mels]
    audio_mask: np.ndarray  # bool [n]
    faces: FaceRows
    times: np.ndarray | None = None  # float64 [n]: each frame's start time in seconds (None = index / fps)

    def __len__(self) -> int:
        return len(self.audio_mask)

    def faces_per_frame(self) -> np.ndarray:
        return np.bincount(self.faces.frame[self.faces.present], minlength=len(self)).astype(np.int16)


def centred_rows(face: np.ndarray, face_mask: np.ndarray, width: int, height: int) -> FaceRows:
    """Face-centred input: every frame is one face (track 0), the whole frame; a blank frame is no face."""
    n = len(face_mask)
    return FaceRows(np.arange(n, dtype=np.int32), np.zeros(n, np.int32), face_mask.astype(bool),
                    np.tile(np.array([0, 0, width, height], np.float32), (n, 1)), np.full(n, np.nan, np.float32),
                    face)


# ---- visual --------------------------------------------------------------------------------------


def blank_mask(crops: np.ndarray, p: Preprocessing = PREPROCESSING) -> np.ndarray:
    """True where a crop has content. A blank (uniform) crop means the face is missing."""
    grey = crops.astype(np.float32).mean(axis=-1)
    return grey.reshape(len(crops), -1).std(axis=1) >= p.blank_std


MIN_FACE_SOURCE_PX = 24  # smallest face labelled, in pixels of the source video
DETECT_MIN_SIDE = 64  # tiny videos are scaled up to this in the decoder: decord fails batches of 16x16 frames


def detect_size(info: VideoInfo) -> tuple[int, int]:
    long = max(info.width, info.height)
    scale = min(1.0, DETECT_MAX_SIDE / long) if long >= DETECT_MIN_SIDE else DETECT_MIN_SIDE / long
    return max(2, int(round(info.width * scale))), max(2, int(round(info.height * scale)))


def source_scale(info: VideoInfo) -> np.ndarray:
    """Decoded (detection-size) pixels -> source pixels, per axis."""
    w, h = detect_size(info)
    return np.array([info.width / w, info.height / h], np.float32)


def tracker_settings(info: VideoInfo, tracker: TrackerSettings = TrackerSettings()) -> TrackerSettings:
    # A face smaller than MIN_FACE_SOURCE_PX in the source carries no expression to speak of (a tiny video
    # is decoded scaled up, so the limit is set in source pixels).
    min_face = max(tracker.min_face, MIN_FACE_SOURCE_PX / float(source_scale(info).min()))
    return dataclasses.replace(tracker, min_face=min_face)


TrackedFaces = list[tuple[np.ndarray, Faces]]  # per frame: track ids int32 [k] and their faces


def face_rows(frames: np.ndarray, per_frame: TrackedFaces, to_source: np.ndarray,
              p: Preprocessing = PREPROCESSING) -> FaceRows:
    """The tracker's faces of a chunk of frames, aligned and turned into the model's face tensor."""
    idx, tracks, boxes, scores, crops = [], [], [], [], []
    for i, (ids, faces) in enumerate(per_frame):
        if not len(ids):
            continue
        idx.append(np.full(len(ids), i, np.int32))
        tracks.append(ids)
        xy = faces.boxes[:, :2] * to_source
        wh = (faces.boxes[:, 2:] - faces.boxes[:, :2]) * to_source
        boxes.append(np.concatenate([xy, wh], 1))
        scores.append(faces.scores)
        crops.append(model_face(align_faces(frames[i], faces.landmarks), p))
    if not idx:
        c = p.crop_size
        return FaceRows(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool),
                        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, c, c, 3), np.uint8))
    frame = np.concatenate(idx)
    return FaceRows(frame, np.concatenate(tracks), np.ones(len(frame), bool),
                    np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
                    np.concatenate(crops))


class FaceFrontEnd:
    """Raw footage: every face of every frame, tracked, aligned and turned into the model's face tensor."""

    def __init__(self, info: VideoInfo, p: Preprocessing = PREPROCESSING,
                 tracker: TrackerSettings = TrackerSettings()) -> None:
        self.p = p
        self.to_source = source_scale(info)
        self.tracker = FaceTracker(MTCNN(), tracker_settings(info, tracker))

    def __call__(self, start: int, frames: np.ndarray) -> FaceRows:
        """The faces of ``frames`` (consecutive, the first at absolute index ``start``, fed in order)."""
        return face_rows(frames, self.tracker.track_chunk(frames), self.to_source, self.p)


FrontEnd = Callable[[int, np.ndarray], FaceRows]  # (absolute index of frames[0], frames) -> their faces


CENTRED_SAMPLE = 5  # frames checked per video in face-centred mode
CENTRED_MIN_WIDTH = 0.35  # a face-centred frame's face spans at least this fraction of its width


def check_face_centred(path: str, info: VideoInfo, decoder: Decoder) -> str | None:
    """A warning when sampled frames of supposedly face-centred input show small or several faces (raw
    footage labelled with ``--faces centred`` gets nonsense: a whole scene squashed into one face crop).
    Frames where the detector finds nothing raise no warning: tight crops and drawn faces defeat it."""
    n = min(CENTRED_SAMPLE, info.n_frames)
    idx = sorted({int(i) for i in np.linspace(0, info.n_frames - 1, n + 2)[1:-1].round()}) or [0]
    w, h = detect_size(info)
    try:
        frames = decoder.read_frames(path, idx, w, h)
    except BadInputError:
        return None  # the labelling itself will report what is wrong with the file
    detector = MTCNN()
    bad, worst = 0, ""
    for f in frames:
        faces = detector.detect(f)
        if not len(faces):
            continue
        widest = float((faces.boxes[:, 2] - faces.boxes[:, 0]).max()) / w
        if len(faces) > 1 or widest < CENTRED_MIN_WIDTH:
            bad += 1
            worst = f"{len(faces)} face(s), the largest {widest:.0%} of the frame's width"
    if bad * 2 <= len(frames):
        return None
    return (f"{bad} of {len(frames)} sampled frames do not look face-centred ({worst}); "
            "this looks like raw footage: label it with --faces detect")


# ---- audio ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def mel_filters(p: Preprocessing) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels]: triangles evenly spaced on the HTK mel scale from 0 Hz to Nyquist,
    unnormalised (torchaudio's MelSpectrogram defaults, which the deployed model was trained on)."""
    freqs = np.linspace(0.0, p.sample_rate / 2, p.n_fft // 2 + 1)
    top = 2595.0 * np.log10(1.0 + p.sample_rate / 2 / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(0.0, top, p.n_mels + 2) / 2595.0) - 1.0)  # in Hz
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rise = (freqs[:, None] - lower) / (centre - lower)
    fall = (upper - freqs[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rise, fall)).astype(np.float32)


@lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic, as in an STFT


def log_mel(windows: np.ndarray, p: Preprocessing = PREPROCESSING) -> np.ndarray:
    """float32 [n, mel_frames, n_mels] from audio windows [n, audio_context]: a power spectrogram (Hann
    window, no centre padding), HTK mel filters, log(. + log_offset). In NumPy, so a worker needs no torch;
    tests/test_preprocess.py holds it to torchaudio's MelSpectrogram on real audio."""
    frames = np.lib.stride_tricks.sliding_window_view(windows, p.n_fft, axis=1)[:, :: p.hop_length]
    spectrum = np.fft.rfft(frames * _hann(p.n_fft), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return np.log(power @ mel_filters(p) + np.float32(p.log_offset))


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
    shorter than the video reads as silence there). Times and samples share one zero, the first frame's
    presentation time: sample k of ``samples`` is at k / sample_rate s (``Decoder.read_audio`` places the
    track so, whenever it starts in the container).
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
    mel[:] = log_mel(windows, p)
    return mel, present


# ---- one video -----------------------------------------------------------------------------------


def iter_video_inputs(
    path: str,
    info: VideoInfo,
    *,
    face_mode: FaceMode = "detect",
    chunk: int = 256,
    decoder: Decoder | None = None,
    p: Preprocessing = PREPROCESSING,
    start: int = 0,
    stop: int | None = None,
    front: FrontEnd | None = None,
    tick: Callable[[], None] = lambda: None,
) -> Iterator[InputChunk]:
    """Stream one video's model inputs in chunks of at most ``chunk`` frames, covering every frame.

    ``start``/``stop``: only frames [start, stop), in the chunks the whole video's pass has (``start`` a
    multiple of ``chunk``), so every chunk's inputs are computed exactly as in that pass. ``front``: where the
    faces of raw footage come from (default: a tracker fed from ``start``; workers/task/segments.py passes faces
    tracked beforehand). ``tick``: called while the sound before ``start`` is decoded (a heartbeat)."""
    decoder = decoder or VideoDecoder()
    stop = info.n_frames if stop is None else stop
    if start % chunk or not 0 <= start <= stop <= info.n_frames:
        raise ValueError(f"frames [{start}, {stop}) of {info.n_frames}: start must be a multiple of {chunk}")
    samples = decoder.read_audio(path, p.sample_rate) if info.has_audio else None
    times = decoder.frame_times(path)
    if len(times) != info.n_frames:
        raise BadInputError(Reason.FRAME_COUNT_MISMATCH, f"{len(times)} frame timestamps for {info.n_frames} frames")
    mids = frame_midpoints(times, info.fps)
    if start > 0 and isinstance(samples, AudioStream):
        # What the whole pass has released by this chunk, decoded and dropped now: neither held in memory
        # (an hour of sound before a late segment) nor decoded in one call without a heartbeat.
        samples.skip_to(int(round(mids[start] * p.sample_rate)) - p.audio_context, tick)
    if face_mode == "centred":
        size = (p.crop_size, p.crop_size)
    elif face_mode == "detect":
        size = detect_size(info)
        front = front or FaceFrontEnd(info, p)
    else:
        raise ValueError(f"face_mode must be one of {FACE_MODES}, not {face_mode!r}")
    frame_range = {} if (start, stop) == (0, info.n_frames) else {"start": start, "stop": stop}
    # Raw footage is shrunk from the decoder's YUV planes (less than half the CPU); face-centred input keeps
    # the decoder's own scaling, whose pixels the window model was trained on.
    for frames in decoder.iter_frames(path, size[0], size[1], chunk, **frame_range,
                                      fast_scale=face_mode == "detect"):
        n = len(frames)
        if face_mode == "centred":
            face = np.ascontiguousarray(frames)
            rows = centred_rows(face, blank_mask(face, p), info.width, info.height)
        else:
            rows = cast(FrontEnd, front)(start, frames)  # "detect": set above
        mel, audio_mask = audio_features(samples, info.fps, start, n, p, mids[start : start + n])
        if isinstance(samples, AudioStream) and start + n < len(mids):  # later frames need nothing earlier
            samples.release(int(round(mids[start + n] * p.sample_rate)) - p.audio_context)
        yield InputChunk(start, mel, audio_mask, rows, times[start : start + n])
        start += n
