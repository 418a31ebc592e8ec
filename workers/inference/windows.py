"""Cutting a video's stream of faces and audio into model windows of T frames with stride S.

The model sees one face at a time, so frames are grouped into *segments*, each labelled on its own:
one segment per face track (the consecutive frames where that face is followed; the audio of each frame
is shared by every face in it), and one per run of consecutive frames without any face (audio only).
Face-centred input is a single track 0 that spans the whole video, with the face masked on blank frames.

Windows are cut per segment as soon as their frames are in, so memory holds at most T frames per open
segment plus one chunk, whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from emoframe.workers.spec.contract import INPUT_NAMES, PREPROCESSING, Preprocessing
from emoframe.workers.media.preprocess import InputChunk

FIELDS = INPUT_NAMES
NO_TRACK = -1  # the track id of a segment of frames without a face


class FrameCountError(RuntimeError):
    """The decoder delivered a different number of frames than the container announced."""


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """Starts of the windows that cover frames [0, n_frames): every S frames, plus one flush with the end.

    A run shorter than one window gets a single window at 0 (padded by ``pad_window``).
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
    segment: int  # which segment of the video (see Segment.number)
    start: int  # position of the window's first frame within its segment
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


@dataclass
class Segment:
    """Consecutive frames labelled together: one face track, or frames with no face (track NO_TRACK)."""

    number: int
    track: int
    first_frame: int
    # per frame of the segment (kept for the output rows: O(frames), no pixels)
    present: list[bool] = field(default_factory=list)
    box: list[np.ndarray] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    audio: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.present)


class _Builder:
    """The open end of one segment: buffers the inputs that windows not yet cut still need."""

    def __init__(self, seg: Segment, window: int, stride: int):
        self.seg, self.window, self.stride = seg, window, stride
        self.buf: dict[str, list[np.ndarray | np.bool_]] = {k: [] for k in FIELDS}
        self.offset = 0  # segment position of buf[...][0]
        self.next_start = 0

    def _cut(self, s: int, e: int) -> Window:
        lo, hi = s - self.offset, e - self.offset
        arrays = {k: np.stack(v[lo:hi]) for k, v in self.buf.items()}
        return Window(self.seg.number, s, e - s, pad_window(arrays, self.window))

    def push(self, inputs: dict[str, np.ndarray | np.bool_]) -> Iterator[Window]:  # masks: numpy bool scalars
        for k in FIELDS:
            self.buf[k].append(inputs[k])
        count = len(self.seg)
        while self.next_start + self.window <= count:
            yield self._cut(self.next_start, self.next_start + self.window)
            self.next_start += self.stride
        # Keep what a later window (or the final one, flush with the end) needs.
        keep_from = max(self.offset, min(self.next_start, count - self.window))
        if keep_from > self.offset:
            for k in FIELDS:
                del self.buf[k][: keep_from - self.offset]
            self.offset = keep_from

    def close(self) -> Iterator[Window]:
        n = len(self.seg)
        for s in window_starts(n, self.window, self.stride):
            # Starts at multiples of S below next_start were cut by push; what is left is a run shorter
            # than T (start 0) or the last window, flush with the end.
            if s >= self.next_start or s % self.stride:
                yield self._cut(s, min(n, s + self.window))


def iter_windows(chunks: Iterable[InputChunk], n_frames: int, segments: list[Segment], stride: int,
                 p: Preprocessing = PREPROCESSING, audio: bool = True) -> Iterator[Window]:
    """Windows of every segment of a video, in the order their frames arrive. ``segments`` is filled in as
    segments open (the caller reads each segment's rows from it afterwards). With ``audio`` False the model
    is sent no audio (every audio_mask False); the segments still record where the video has sound."""
    audio_on = np.bool_(audio)
    open_tracks: dict[int, _Builder] = {}
    no_face: _Builder | None = None
    decoded = 0
    for chunk in chunks:
        f = chunk.faces
        bounds = np.searchsorted(f.frame, np.arange(len(chunk) + 1))  # rows of frame i: bounds[i]:bounds[i+1]
        empty_face = np.zeros(f.face.shape[1:], np.uint8)
        for i in range(len(chunk)):
            frame = chunk.start + i
            sound = {"mel": chunk.mel[i], "audio_mask": chunk.audio_mask[i] & audio_on}
            rows = range(bounds[i], bounds[i + 1])
            here = {int(f.track[r]) for r in rows}
            for t in [t for t in open_tracks if t not in here]:
                yield from open_tracks.pop(t).close()
            if rows and no_face is not None:
                yield from no_face.close()
                no_face = None
            for r in rows:
                t = int(f.track[r])
                if t not in open_tracks:
                    segments.append(Segment(len(segments), t, frame))
                    open_tracks[t] = _Builder(segments[-1], p.window, stride)
                b = open_tracks[t]
                b.seg.present.append(bool(f.present[r]))
                b.seg.box.append(f.box[r])
                b.seg.score.append(float(f.score[r]))
                b.seg.audio.append(bool(chunk.audio_mask[i]))
                yield from b.push({"face": f.face[r], "face_mask": f.present[r], **sound})
            if not rows:
                if no_face is None:
                    segments.append(Segment(len(segments), NO_TRACK, frame))
                    no_face = _Builder(segments[-1], p.window, stride)
                no_face.seg.present.append(False)
                no_face.seg.box.append(np.full(4, np.nan, np.float32))
                no_face.seg.score.append(float("nan"))
                no_face.seg.audio.append(bool(chunk.audio_mask[i]))
                yield from no_face.push({"face": empty_face, "face_mask": np.False_, **sound})
        decoded += len(chunk)
    if decoded != n_frames:
        raise FrameCountError(f"decoder yielded {decoded} frames but the video reported {n_frames}")
    for b in open_tracks.values():
        yield from b.close()
    if no_face is not None:
        yield from no_face.close()
