"""One video's inputs -> per-frame probabilities, labels and confidences.

The same function serves Triton (``infer_many`` sends batches over gRPC with several in flight) and
in-process evaluation (``infer_many`` calls the PyTorch model), so evaluation measures exactly what
serving does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from workers.contract import MAX_BATCH_SIZE, PREPROCESSING, Preprocessing
from workers.preprocess import InputChunk
from workers.voting import WindowAccumulator, decide, smooth
from workers.windows import FIELDS, Window, iter_windows

InferMany = Callable[[Iterable[dict[str, np.ndarray]]], Iterator[np.ndarray]]


@dataclass
class FramePredictions:
    probs: np.ndarray  # float32 [N, C], after voting when it was on
    labels: np.ndarray  # int16 [N]
    confidence: np.ndarray  # float32 [N]


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


def predict_video(
    chunks: Iterable[InputChunk],
    n_frames: int,
    fps: float,
    infer_many: InferMany,
    *,
    voting: bool = True,
    batch_size: int = MAX_BATCH_SIZE,
    p: Preprocessing = PREPROCESSING,
) -> FramePredictions:
    """With voting: windows every S frames, overlaps averaged, then a ``vote_seconds`` moving average.
    Without: back-to-back windows (stride T) and each frame's own prediction."""
    acc = WindowAccumulator(n_frames)
    pending: list[list[Window]] = []
    stride = p.stride if voting else p.window
    batches = _batches(iter_windows(chunks, n_frames, p, stride=stride), batch_size, pending)
    for probs in infer_many(batches):
        group = pending.pop(0)
        if probs.shape[0] != len(group):
            raise RuntimeError(f"model returned {probs.shape[0]} windows for a batch of {len(group)}")
        for w, wp in zip(group, probs):
            acc.add(w.start, wp, w.length)
    probs = acc.mean()
    if voting:
        probs = smooth(probs, p.vote_frames(fps))
    labels, conf = decide(probs)
    return FramePredictions(probs, labels, conf)


def arrays_to_chunks(arrays: dict[str, np.ndarray], chunk: int = 512) -> Iterator[InputChunk]:
    """Whole-video arrays (training cache) as the chunk stream ``predict_video`` consumes."""
    n = len(arrays["face_mask"])
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        yield InputChunk(s, arrays["face"][sl], arrays["face_mask"][sl], arrays["mel"][sl],
                         arrays["audio_mask"][sl], arrays["face_mask"][sl].astype(np.int16))
