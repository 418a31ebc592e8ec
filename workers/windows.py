"""Cutting a stream of per-frame inputs into fixed windows of T frames with stride S."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from workers.contract import INPUT_NAMES, PREPROCESSING, Preprocessing
from workers.preprocess import InputChunk

FIELDS = INPUT_NAMES


class FrameCountError(RuntimeError):
    """The decoder delivered a different number of frames than the container announced."""


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """Starts of the windows that cover frames [0, n_frames): every S frames, plus one flush with the end.

    A video shorter than one window gets a single window at 0 (padded by ``pad_window``).
    """
    if n_frames <= 0:
        return []
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


@dataclass
class Window:
    start: int
    length: int  # real frames; the rest up to T is padding with both masks False
    inputs: dict[str, np.ndarray]  # the contract's input tensors for this window, without batch dim


def pad_window(arrays: dict[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Pad each input to ``window`` frames; padded frames have both masks False so the model ignores them."""
    n = len(arrays["face_mask"])
    if n == window:
        return arrays
    out = {}
    for k, a in arrays.items():
        pad = np.zeros((window - n, *a.shape[1:]), a.dtype)
        out[k] = np.concatenate([a, pad])
    return out


def iter_windows(chunks: Iterable[InputChunk], n_frames: int, p: Preprocessing = PREPROCESSING,
                 stride: int | None = None) -> Iterator[Window]:
    """Windows over a chunk stream, holding at most one chunk plus T frames in memory."""
    stride = stride or p.stride
    starts = window_starts(n_frames, p.window, stride)
    buf: dict[str, np.ndarray] | None = None
    buf_start = 0  # frame index of buf's first row
    next_w = 0
    for chunk in chunks:
        arrays = {k: getattr(chunk, k) for k in FIELDS}
        if buf is None:
            buf, buf_start = arrays, chunk.start
        else:
            buf = {k: np.concatenate([buf[k], arrays[k]]) for k in FIELDS}
        buf_end = buf_start + len(buf["face_mask"])
        while next_w < len(starts):
            s = starts[next_w]
            e = min(s + p.window, n_frames)
            if e > buf_end:
                break
            sl = slice(s - buf_start, e - buf_start)
            yield Window(s, e - s, pad_window({k: v[sl] for k, v in buf.items()}, p.window))
            next_w += 1
        # Drop frames no later window needs.
        keep_from = starts[next_w] if next_w < len(starts) else buf_end
        drop = keep_from - buf_start
        if drop > 0:
            buf = {k: v[drop:] for k, v in buf.items()}
            buf_start = keep_from
    if next_w != len(starts):
        decoded = buf_start + (0 if buf is None else len(buf["face_mask"]))
        raise FrameCountError(f"decoder yielded {decoded} frames but the video reported {n_frames}")
