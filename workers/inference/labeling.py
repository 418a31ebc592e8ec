"""One video's inputs -> probabilities, labels and confidences per face and frame.

The same function serves Triton (``infer_many`` sends batches over gRPC with several in flight) and
in-process evaluation (``infer_many`` calls the PyTorch model), so evaluation measures exactly what
serving does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from emoframe.workers.spec.contract import MAX_BATCH_SIZE, NUM_CLASSES, PREPROCESSING, Preprocessing
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.media.preprocess import FaceRows, InputChunk
from emoframe.workers.inference.voting import WindowAccumulator, decide, smooth
from emoframe.workers.inference.windows import FIELDS, Segment, Window, iter_windows

InferMany = Callable[[Iterable[dict[str, np.ndarray]]], Iterator[np.ndarray]]


@dataclass
class Predictions:
    """One row per face and frame, plus one row per frame without a face; ordered by frame, then track."""

    frame: np.ndarray  # int32 [R]
    track: np.ndarray  # int32 [R]; NO_TRACK (-1) for a frame without a face
    face_present: np.ndarray  # bool [R]
    box: np.ndarray  # float32 [R, 4]: x, y, w, h in source pixels (NaN without a face)
    score: np.ndarray  # float32 [R]: detection score (NaN when there is none)
    audio_present: np.ndarray  # bool [R]: the video has sound at this frame (whether or not the model heard it)
    evidence: np.ndarray  # bool [R]: the model saw a face or heard audio here; without, the label means nothing
    probs: np.ndarray  # float32 [R, C], after voting when it was on
    labels: np.ndarray  # int16 [R]
    confidence: np.ndarray  # float32 [R]

    def __len__(self) -> int:
        return len(self.frame)


def _batches(windows: Iterable[Window], batch_size: int, pending: list[list[Window]]) -> Iterator[dict]:
    """Stack windows into contract batches; remembers each batch's windows in ``pending`` (FIFO)."""
    group: list[Window] = []
    for w in windows:
        group.append(w)
        if len(group) == batch_size:
            pending.append(group)
            yield {k: np.stack([g.inputs[k] for g in group]) for k in FIELDS}
            group = []
    if group:
        pending.append(group)
        yield {k: np.stack([g.inputs[k] for g in group]) for k in FIELDS}


def _rows(segments: list[Segment], accs: dict[int, WindowAccumulator], fps: float, voting: bool,
          policy: LabellingPolicy) -> Predictions:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("frame", "track", "face_present", "box", "score", "audio", "probs")}
    for seg in segments:
        n = len(seg)
        probs = accs[seg.number].mean(n)  # every segment has at least one window
        if voting:
            probs = smooth(probs, policy.vote_frames(fps))
        parts["frame"].append(np.arange(seg.first_frame, seg.first_frame + n, dtype=np.int32))
        parts["track"].append(np.full(n, seg.track, np.int32))
        parts["face_present"].append(np.asarray(seg.present, bool))
        parts["box"].append(np.asarray(seg.box, np.float32).reshape(n, 4))
        parts["score"].append(np.asarray(seg.score, np.float32))
        parts["audio"].append(np.asarray(seg.audio, bool))
        parts["probs"].append(probs)
    if not segments:
        return Predictions(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool),
                           np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, bool),
                           np.zeros((0, NUM_CLASSES), np.float32), np.zeros(0, np.int16), np.zeros(0, np.float32))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((cat["track"], cat["frame"]))
    cat = {k: v[order] for k, v in cat.items()}
    labels, conf = decide(cat["probs"])
    evidence = cat["face_present"] | (cat["audio"] & policy.audio)
    return Predictions(cat["frame"], cat["track"], cat["face_present"], cat["box"], cat["score"], cat["audio"],
                       evidence, cat["probs"], labels, conf)


def predict_video(
    chunks: Iterable[InputChunk],
    n_frames: int,
    fps: float,
    infer_many: InferMany,
    *,
    voting: bool = True,
    batch_size: int = MAX_BATCH_SIZE,
    p: Preprocessing = PREPROCESSING,
    policy: LabellingPolicy = POLICY,
) -> Predictions:
    """Per segment (face track or face-less run), with voting: windows every ``policy.stride`` frames,
    overlaps averaged, then a ``policy.vote_seconds`` moving average. Without: back-to-back windows (stride
    T), each frame's own prediction. The model hears the audio only where ``policy.audio`` says so."""
    policy.check_window(p.window)
    segments: list[Segment] = []
    accs: dict[int, WindowAccumulator] = {}
    pending: list[list[Window]] = []
    stride = policy.stride if voting else p.window
    batches = _batches(iter_windows(chunks, n_frames, segments, stride, p, audio=policy.audio), batch_size, pending)
    for probs in infer_many(batches):
        group = pending.pop(0)
        if probs.shape[0] != len(group):
            raise RuntimeError(f"model returned {probs.shape[0]} windows for a batch of {len(group)}")
        for w, wp in zip(group, probs):
            accs.setdefault(w.segment, WindowAccumulator()).add(w.start, wp, w.length)
    return _rows(segments, accs, fps, voting, policy)


def arrays_to_chunks(arrays: dict[str, np.ndarray], chunk: int = 512) -> Iterator[InputChunk]:
    """Whole-video arrays of one face-centred stream (training cache) as the chunk stream ``predict_video``
    consumes: one face per frame (track 0), masked where ``face_mask`` is False."""
    n = len(arrays["face_mask"])
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        m = sl.stop - sl.start
        rows = FaceRows(np.arange(m, dtype=np.int32), np.zeros(m, np.int32), arrays["face_mask"][sl].astype(bool),
                        np.full((m, 4), np.nan, np.float32), np.full(m, np.nan, np.float32), arrays["face"][sl])
        yield InputChunk(s, arrays["mel"][sl], arrays["audio_mask"][sl], rows)

