"""Sliding-window soft voting.

Two steps: (1) every frame's probabilities are the mean over the model windows that cover it
(overlapping windows); (2) those are averaged over a centred span of ``vote_frames`` frames (clipped at
the video's edges) and the label is the argmax. An isolated one-frame flip is outvoted; a segment
longer than the span survives.
"""

from __future__ import annotations

import numpy as np

from emoframe.workers.spec.contract import NUM_CLASSES


class WindowAccumulator:
    """Sums per-window, per-frame probabilities of one segment into per-frame means; grows as windows
    arrive (a segment's length is known only when it ends). O(frames x classes) memory."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        self.sum = np.zeros((0, n_classes), np.float64)
        self.count = np.zeros(0, np.int32)

    def _reserve(self, n: int) -> None:
        if n > len(self.count):
            size = max(n, 2 * len(self.count), 64)
            self.sum = np.concatenate([self.sum, np.zeros((size - len(self.sum), self.sum.shape[1]))])
            self.count = np.concatenate([self.count, np.zeros(size - len(self.count), np.int32)])

    def add(self, start: int, probs: np.ndarray, length: int) -> None:
        """``probs``: [T, C] for a window at ``start`` of which the first ``length`` frames are real."""
        self._reserve(start + length)
        self.sum[start : start + length] += probs[:length]
        self.count[start : start + length] += 1

    def mean(self, n_frames: int) -> np.ndarray:
        """Per-frame mean probabilities of frames [0, n_frames); every one must have had a window."""
        self._reserve(n_frames)
        count = self.count[:n_frames]
        if (count == 0).any():
            missing = np.flatnonzero(count == 0)
            raise RuntimeError(f"{len(missing)} frames got no prediction (first: {missing[0]})")
        return (self.sum[:n_frames] / count[:, None]).astype(np.float32)


def smooth(probs: np.ndarray, span: int) -> np.ndarray:
    """Centred moving average of [n, C] probabilities over ``span`` frames, renormalised at the edges."""
    if span <= 1 or len(probs) <= 1:
        return probs.astype(np.float32)
    half = span // 2
    csum = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0, dtype=np.float64)])
    idx = np.arange(len(probs))
    lo = np.clip(idx - half, 0, len(probs))
    hi = np.clip(idx + half + 1, 0, len(probs))
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


def decide(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids and confidences (the winning probability) per frame."""
    labels = probs.argmax(axis=1)
    return labels.astype(np.int16), probs[np.arange(len(probs)), labels].astype(np.float32)


def label_flips(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(labels) != 0)) if len(labels) > 1 else 0
