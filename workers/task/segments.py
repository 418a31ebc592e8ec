"""One long video labelled as segments in parallel, stitched into exactly the rows that one task writes.

``label_video`` labels a video in one task, on one core. Here frames [0, n) are cut into segments (frame
ranges whose ends are multiples of ``cfg.chunk_frames``: the chunks of the one-task pass, so every chunk's
decoding, tracking, face crops and audio features are computed exactly as there), labelled by tasks that
run in parallel, and stitched by one step that writes the frames file and then the videos row.

Why the result is identical, not just close:

1. Faces (detect mode only; face-centred input has no tracker). A tracker's output depends on its history.
   Wave 1 tracks each segment in its own task, starting ``warmup`` frames before the segment (fresh), and
   keeps the tracker's state (``TrackerState``: live tracks' boxes, scores and landmarks, the lost flag, the
   last thumbnail) at each frame it updates in that warm-up; the previous segment keeps its states over the
   same frames. The detection schedule is on absolute frame indices (workers/media/faces/tracker.py), so once
   both trackers are in the same state at a frame (bit for bit, track ids aside) they give the same faces
   from there on: the segment's faces replace the previous one's from its first frame, its track ids mapped
   onto the previous segment's (live tracks by position, new ones by offset: ids stay the one-task ids). Two
   trackers usually agree after the first scheduled full detection that re-detects every face. Where they
   never agree within the warm-up (a face the detector does not find again, that O-Net keeps following), the
   segment is tracked again from the previous segment's final state: sequential, but exact.
2. Model windows. Windows are cut per run of frames (a track, or a run without faces) at positions relative
   to the run's first frame, and Triton may answer a window differently in a batch of another size. So the
   driver computes, from the whole video's faces, every window and the batches of 16 that the one-task run
   sends, in its order (``iter_windows`` itself, run over a skeleton of the rows without pixels), and each
   wave-2 task sends exactly the batches that complete in its segment. Their inputs: its own frames' as wave 1
   computed them while tracking (kept on the node, segment_store.py: crops of the faces the join confirmed,
   the same chunks' log-mel), and those of the frames before the segment that its first batches reach back
   to (a few hundred), decoded. The same inputs in the same batches: the same outputs.
3. Voting. Overlapping windows are averaged and smoothed over the soft-voting span per run, across segment
   boundaries: the stitch step adds every window's probabilities in the one-task order (float64 sums in the
   same order) and calls the same ``_rows``. Nothing is averaged per segment, so a boundary inside a window
   or a voting span changes nothing.

Entry points: ``label_video(source, cfg, split=...)`` (workers/task/video_task.py) hands a video long enough for
two segments of ``cfg.segment_minutes`` (``splittable``, in its isolated child, right after the probe it
makes anyway) to ``label_split``, which asks a ``Reserve`` for workers (``ray_workers``: a Ray placement
group, in the flow's ``label_one``; ``fixed_workers`` in tests) and runs ``label_in_segments`` over them, or
returns None (then one task labels it). The steps: ``probe_video`` (in the isolated child),
``segment_count`` (when to split), ``plan_segments``, ``track_segment`` / ``join_tracks`` (detect mode),
``plan_work``, ``label_segment``, ``stitch``; ``label_in_segments`` runs them all with a parallel map.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager, cast
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from emoframe.workers.spec.contract import MAX_BATCH_SIZE, PREPROCESSING, Preprocessing
from emoframe.workers.media.decode import VideoInfo
from emoframe.workers.spec.errors import BadInputError, Reason
from emoframe.workers.spec.retries import RAY_TASK_RETRIES
from emoframe.workers.media.faces.detector import Faces
from emoframe.workers.media.faces.tracker import FaceTracker, TrackerState
from emoframe.workers.inference.labeling import _rows
from emoframe.workers.media.preprocess import (FaceRows, InputChunk, check_face_centred, face_rows,
                                iter_video_inputs, source_scale, tracker_settings)
from emoframe.workers.inference.voting import WindowAccumulator
from emoframe.workers.inference.windows import FIELDS, NO_TRACK, Segment, iter_windows, pad_window
from emoframe.workers.task import segment_store

TRACK_WARMUP_FRAMES = 512  # frames a segment's tracker runs before its first frame: ~11 scheduled detections

# ---- what to split, and where -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What the flow needs to know about a video before it splits it (read in the isolated child)."""

    info: VideoInfo
    backend: str  # "decord" (seeks) or "pyav" (decodes from the first frame: not worth splitting)
    times: np.ndarray  # float64 [n]: each frame's start time (s), as the frames table records it


@dataclass(frozen=True)
class VideoSegment:
    """Frames [start, stop) of a video, labelled by one task."""

    index: int
    start: int
    stop: int
    track_from: int  # its face tracker starts here (start less the warm-up), fresh
    tail_from: int | None  # the next segment's warm-up starts here: tracker states are kept from here on

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SegmentFailure:
    """Bad input met by a segment's task; returned, not raised, so it crosses Ray with its reason intact."""

    reason: str
    message: str

    def error(self) -> BadInputError:
        return BadInputError(self.reason, self.message)


def _unwrap(result):
    if isinstance(result, SegmentFailure):
        raise result.error()
    return result


def probe_video(source, cfg) -> Probe | SegmentFailure:
    """The video's length, frame times and decoder, read in the isolated child (decord may crash on it)."""
    from emoframe.workers.task.video_task import run_with_retries

    try:
        return run_with_retries(_probe, (source, cfg), cfg)
    except BadInputError as exc:
        return SegmentFailure(exc.reason, exc.message)


def _probe(source, cfg, progress=None) -> Probe:
    from emoframe.workers.task.video_task import local_copy, make_decoder

    decoder = make_decoder(cfg.decoder)
    with local_copy(source, progress) as path:
        return _probe_of(decoder, path, decoder.probe(path))


def _probe_of(decoder, path: str, info: VideoInfo) -> Probe:
    backend = decoder.backend(path) if hasattr(decoder, "backend") else "decord"
    return Probe(info, backend, np.asarray(decoder.frame_times(path), np.float64))


def segment_frames(minutes: float, fps: float) -> int:
    """A segment's least length in frames (``LabelConfig.segment_minutes`` at the video's rate)."""
    return max(1, round(minutes * 60 * fps))


def splittable(decoder, path: str, info: VideoInfo, minutes: float, min_segments: int = 2) -> Probe | None:
    """In the isolated child, right after the probe: the video's ``Probe`` when it is long enough for
    ``min_segments`` segments of ``minutes`` and decord decodes it, else None (labelled in one task)."""
    least, fewest = segment_frames(minutes, info.fps), max(2, min_segments)
    if info.n_frames < fewest * least:
        return None
    probe = _probe_of(decoder, path, info)
    return probe if segment_count(probe, fewest, least) == fewest else None


def segment_count(probe: Probe, free_workers: int, min_segment_frames: int) -> int:
    """How many segments to label ``probe``'s video in: one per free worker, none shorter than
    ``min_segment_frames``; 1 (do not split) for a short video, or one PyAV decodes (each segment would
    decode every frame before its own: MPEG-TS and other files without an index to seek by)."""
    if probe.backend != "decord":
        return 1
    return max(1, min(free_workers, probe.info.n_frames // max(1, min_segment_frames)))


def plan_segments(n_frames: int, count: int, chunk: int, warmup: int = TRACK_WARMUP_FRAMES,
                  starts: Sequence[int] | None = None) -> list[VideoSegment]:
    """``count`` segments of about equal length (or starting at ``starts``), each starting on a multiple of
    ``chunk``; ``warmup`` is rounded up to whole chunks."""
    if starts is None:
        size = -(-n_frames // max(1, count) // chunk) * chunk or chunk
        starts = list(range(0, n_frames, size))
    starts = sorted(set(int(s) for s in starts) | {0})
    if any(s % chunk or not 0 <= s < n_frames for s in starts):
        raise ValueError(f"segment starts {starts} must be multiples of {chunk} inside [0, {n_frames})")
    warm = -(-warmup // chunk) * chunk
    stops = starts[1:] + [n_frames]
    froms = [max(0, s - warm) for s in starts]
    return [VideoSegment(i, s, e, froms[i], froms[i + 1] if i + 1 < len(starts) else None)
            for i, (s, e) in enumerate(zip(starts, stops))]


# ---- wave 1: faces ----------------------------------------------------------------------------------------


@dataclass
class TrackPart:
    """One segment's tracker output for its own frames, and its states where it overlaps its neighbours."""

    segment: VideoSegment
    frame: np.ndarray  # int32 [m]: absolute frame index, one row per face and frame
    track: np.ndarray  # int32 [m]: the task's own track ids (global when ``seeded``)
    boxes: np.ndarray  # float32 [m, 4]: x0, y0, x1, y1 in pixels of the tracked (detection-size) frame
    scores: np.ndarray  # float32 [m]
    landmarks: np.ndarray  # float32 [m, 5, 2]
    head: dict[int, TrackerState]  # at frames of its warm-up (before ``segment.start``)
    tail: dict[int, TrackerState]  # at frames of the next segment's warm-up
    final: TrackerState
    seeded: bool = False  # tracked on from the previous segment's final state (no warm-up)
    stored: str | None = None  # its own frames' model inputs, kept on its node (segment_store.py)


class _TrackingFront:
    """Wave 1's front end: the segment's tracker (its states kept by ``keep``), its rows for the TrackPart,
    and the model's face tensor of the segment's own frames (kept for wave 2, segment_store.py)."""

    def __init__(self, tracker: FaceTracker, info: VideoInfo, seg: VideoSegment, crops: bool, p: Preprocessing):
        self.tracker, self.seg, self.crops, self.p = tracker, seg, crops, p
        self.to_source = source_scale(info)
        self.rows: list[tuple[int, np.ndarray, Faces]] = []

    def __call__(self, start: int, frames: np.ndarray) -> FaceRows:
        per_frame = self.tracker.track_chunk(frames)
        for i, (ids, faces) in enumerate(per_frame):
            if start + i >= self.seg.start and len(ids):
                self.rows.append((start + i, ids, faces))
        # Chunks never straddle the segment's start (both are on multiples of the chunk).
        keep = self.crops and start >= self.seg.start
        return face_rows(frames, per_frame, self.to_source, self.p) if keep else face_rows(frames[:0], [],
                                                                                           self.to_source, self.p)


def _track(source, cfg, seg: VideoSegment, seed: TrackerState | None, keep_as: str | None, progress,
           p: Preprocessing = PREPROCESSING) -> TrackPart:
    from emoframe.workers.media.faces.detector import MTCNN
    from emoframe.workers.task.segment_store import InputWriter
    from emoframe.workers.task.video_task import _limit_malloc_arenas, local_copy, make_decoder, one_core

    _limit_malloc_arenas()
    one_core()
    decoder = make_decoder(cfg.decoder)
    head: dict[int, TrackerState] = {}
    tail: dict[int, TrackerState] = {}
    begin = seg.start if seed is not None else seg.track_from
    tracker: FaceTracker

    def keep(index: int) -> None:
        if index < seg.start:
            head[index] = tracker.state()
        # Only from its own first frame: before it, this tracker has not yet been shown to agree with the
        # one-task run (its warm-up), so the next segment must not take its state for the one-task state.
        if seg.tail_from is not None and index >= max(seg.tail_from, seg.start):
            tail[index] = tracker.state()

    writer = InputWriter(keep_as) if keep_as else None
    with local_copy(source, progress) as path:
        info = decoder.probe(path)
        progress(0, seg.stop - begin)
        settings = tracker_settings(info)
        tracker = (FaceTracker.resume(MTCNN(), settings, seed, keep) if seed is not None
                   else FaceTracker(MTCNN(), settings, begin, keep))
        front = _TrackingFront(tracker, info, seg, writer is not None, p)
        # The labelling pass's own chunks (decoded as it decodes them, the same sound): its inputs, bit for bit.
        at = begin
        try:
            for c in iter_video_inputs(path, info, face_mode="detect", chunk=cfg.chunk_frames, decoder=decoder,
                                       p=p, start=begin, stop=seg.stop, front=front, tick=lambda: progress(0)):
                if writer is not None and c.start >= seg.start:
                    writer.write(c)
                at = c.start + len(c)
                progress(at - begin)
            if at != seg.stop:
                raise BadInputError(Reason.FRAME_COUNT_MISMATCH, f"decoder yielded frames up to {at}, not {seg.stop}")
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise
    stored = writer.finish() if writer is not None else None
    return TrackPart(seg, *_rows_arrays(front.rows), head, tail, tracker.state(), seeded=seed is not None,
                     stored=stored)


# TrackPart's frame, track, boxes, scores and landmarks.
_RowArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _rows_arrays(rows: list[tuple[int, np.ndarray, Faces]]) -> _RowArrays:
    if not rows:
        return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    return (np.concatenate([np.full(len(ids), f, np.int32) for f, ids, _ in rows]),
            np.concatenate([ids for _, ids, _ in rows]).astype(np.int32),
            np.concatenate([fa.boxes for _, _, fa in rows]), np.concatenate([fa.scores for _, _, fa in rows]),
            np.concatenate([fa.landmarks for _, _, fa in rows]))


def track_segment(source, cfg, seg: VideoSegment, seed: TrackerState | None = None,
                  keep_as: str | None = None) -> TrackPart | SegmentFailure:
    """Wave 1 (detect mode): track the faces of ``seg`` in the isolated child, from its warm-up start (fresh)
    or, with ``seed`` (the previous segment's final state, global ids), from its first frame. ``keep_as``:
    the name under which its own frames' model inputs are kept on this node for wave 2 (segment_store.py)."""
    from emoframe.workers.task.video_task import run_with_retries

    try:
        return run_with_retries(_track, (source, cfg, seg, seed, keep_as), cfg)
    except BadInputError as exc:
        return SegmentFailure(exc.reason, exc.message)


@dataclass(frozen=True)
class _IdMap:
    """A segment's track ids -> the one-task run's: tracks live where the two trackers agreed by position,
    tracks started later by offset (both trackers number new tracks in the same order from there)."""

    alive: dict[int, int] = field(default_factory=dict)
    threshold: int = 0  # ids from here on were started after the agreement
    base: int = 0  # the one-task id of ``threshold``

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = self.base + ids - self.threshold
        for i in np.flatnonzero(ids < self.threshold):
            if int(ids[i]) not in self.alive:
                raise RuntimeError(f"track {int(ids[i])} ended before the trackers agreed but appears after")
            out[i] = self.alive[int(ids[i])]
        return out.astype(np.int32)


def _agreement(left: TrackPart, left_map: _IdMap, right: TrackPart) -> _IdMap | None:
    """The id map from ``right``'s tracker to the one-task run's, at the first frame where its state equals
    ``left``'s (whose ids ``left_map`` maps); None if they never agree."""
    for f in sorted(right.head):
        ls = left.tail.get(f)
        if ls is not None and right.head[f].same_faces(ls):
            rs = right.head[f]
            alive = dict(zip(rs.ids.tolist(), left_map(ls.ids).tolist()))
            return _IdMap(alive, rs.next_id, int(left_map(np.array([ls.next_id]))[0]))
    return None


@dataclass
class Tracks:
    """The whole video's faces, as the one-task tracker finds them (one row per face and frame)."""

    frame: np.ndarray
    track: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    retracked: list[int]  # segments tracked again from their predecessor's state (no agreement in the warm-up)
    # Per segment: where wave 1 kept the model inputs of its frames (None: tracked again, or not kept), and
    # the files of segments tracked again, whose kept inputs are not the joined faces' (to be removed).
    stored: list[str | None] = field(default_factory=list)
    stale: list[str | None] = field(default_factory=list)


def join_tracks(parts: list[TrackPart],
                retrack: Callable[[VideoSegment, TrackerState], TrackPart | SegmentFailure]) -> Tracks:
    """The segments' faces joined into the one-task run's; ``retrack(segment, seed)`` runs
    ``track_segment(source, cfg, segment, seed)`` where two neighbours never agree (sequentially)."""
    identity = _IdMap({}, 0, 0)
    prev, prev_map = parts[0], identity
    kept, retracked = [(parts[0], identity)], []
    stale: list[str | None] = [None] * len(parts)
    for part in parts[1:]:
        m = _agreement(prev, prev_map, part)
        if m is None:
            s = prev.final
            seed = TrackerState(s.index, prev_map(s.ids), s.faces, int(prev_map(np.array([s.next_id]))[0]), s.lost,
                                s.thumb)
            stale[part.segment.index] = part.stored
            part, m = _unwrap(retrack(part.segment, seed)), identity
            retracked.append(part.segment.index)
        kept.append((part, m))
        prev, prev_map = part, m
    return Tracks(np.concatenate([p.frame for p, _ in kept]), np.concatenate([m(p.track) for p, m in kept]),
                  np.concatenate([p.boxes for p, _ in kept]), np.concatenate([p.scores for p, _ in kept]),
                  np.concatenate([p.landmarks for p, _ in kept]), retracked, [p.stored for p, _ in kept], stale)


# ---- the windows and batches of the one-task run ----------------------------------------------------------


def _skeleton(n_frames: int, frame: np.ndarray, track: np.ndarray, present: np.ndarray | None = None,
              box: np.ndarray | None = None, score: np.ndarray | None = None,
              audio: np.ndarray | None = None, chunk: int = 4096) -> Iterator[InputChunk]:
    """The rows of a video as ``iter_windows`` reads them, without pixels or sound (zero-size arrays):
    the windows it cuts are those of the real pass, in the same order."""
    m = len(frame)
    present = np.ones(m, bool) if present is None else present
    box = np.full((m, 4), np.nan, np.float32) if box is None else box
    score = np.full(m, np.nan, np.float32) if score is None else score
    audio = np.zeros(n_frames, bool) if audio is None else audio
    bounds = np.searchsorted(frame, np.arange(0, n_frames + chunk, chunk))
    for c, s in enumerate(range(0, n_frames, chunk)):
        n = min(chunk, n_frames - s)
        r = slice(bounds[c], bounds[c + 1])
        rows = FaceRows(frame[r] - s, track[r], present[r], box[r], score[r], np.zeros((r.stop - r.start, 0, 0, 3),
                                                                                          np.uint8))
        yield InputChunk(s, np.zeros((n, 0, 0), np.float32), audio[s:s + n], rows)


def _windows(n_frames: int, frame, track, stride: int, p: Preprocessing, **rows) -> tuple[list, list[Segment]]:
    segments: list[Segment] = []
    wins = [(w.segment, w.start, w.length) for w in
            iter_windows(_skeleton(n_frames, frame, track, **rows), n_frames, segments, stride, p)]
    return wins, segments


@dataclass(frozen=True)
class Work:
    """What one wave-2 task labels: the batches (of the one-task run's) that complete in its segment."""

    segment: VideoSegment
    lo: int  # it decodes frames [lo, hi): its own and those its batches' windows need
    hi: int
    batches: list[np.ndarray]  # per batch: int64 [b, 3] windows as (track or NO_TRACK, first frame, length)
    faces: Tracks | None  # detect mode: the faces of frames [lo, hi) (one-task track ids)
    stored: str | None = None  # the model inputs of the segment's own frames, kept by wave 1 on its node
    stale: str | None = None  # inputs wave 1 kept for faces that were tracked again: removed


def _face_rows_of(n_frames: int, cfg, tracks: Tracks | None) -> tuple[np.ndarray, np.ndarray]:
    if cfg.face_mode == "centred":  # every frame is track 0 (a blank frame too: its face is masked)
        return np.arange(n_frames, dtype=np.int32), np.zeros(n_frames, np.int32)
    faces = cast(Tracks, tracks)  # detect mode: the joined faces are given
    return faces.frame, faces.track


def plan_work(probe: Probe, cfg, segments: list[VideoSegment], tracks: Tracks | None = None,
              p: Preprocessing = PREPROCESSING) -> list[Work]:
    """Every model window of the video in the one-task run's batches, each batch given to the segment in
    which its last frame lies. ``tracks``: the joined faces (detect mode)."""
    n = probe.info.n_frames
    frame, track = _face_rows_of(n, cfg, tracks)
    wins, runs = _windows(n, frame, track, cfg.policy.stride, p)
    table = np.array([(runs[s].track, runs[s].first_frame + start, length) for s, start, length in wins],
                     np.int64).reshape(-1, 3)
    batches = [table[i:i + MAX_BATCH_SIZE] for i in range(0, len(table), MAX_BATCH_SIZE)]
    owner = np.searchsorted([s.start for s in segments], [int((b[:, 1] + b[:, 2]).max()) - 1 for b in batches],
                            side="right") - 1
    work = []
    for seg in segments:
        mine = [b for b, o in zip(batches, owner) if o == seg.index]
        lo = min([seg.start] + [int(b[:, 1].min()) for b in mine])
        lo -= lo % cfg.chunk_frames  # whole chunks of the one-task pass
        hi = max([seg.stop] + [int((b[:, 1] + b[:, 2]).max()) for b in mine])
        faces, stored, stale = None, None, None
        if tracks is not None:
            r = slice(*np.searchsorted(tracks.frame, [lo, hi]))
            faces = Tracks(tracks.frame[r], tracks.track[r], tracks.boxes[r], tracks.scores[r], tracks.landmarks[r],
                           [])
            if tracks.stored:
                stored, stale = tracks.stored[seg.index], tracks.stale[seg.index]
        work.append(Work(seg, lo, hi, mine, faces, stored, stale))
    return work


# ---- wave 2: model inputs and Triton ----------------------------------------------------------------------


@dataclass
class SegmentResult:
    """A wave-2 task's answer: small (no pixels), it travels back through Ray's object store."""

    index: int
    probs: list[np.ndarray]  # float32 [b, T, C] per batch of ``Work.batches``
    frame: np.ndarray  # the rows of its own frames [start, stop), as FaceRows has them (absolute frames)
    track: np.ndarray
    present: np.ndarray
    box: np.ndarray
    score: np.ndarray
    audio: np.ndarray  # bool [stop - start]: the video has sound at the frame
    warning: str | None = None
    decoded: int = 0  # frames it decoded (the rest were kept by wave 1)


class _Given:
    """The front end of wave 2: faces tracked beforehand, aligned and cropped as the tracking pass does."""

    def __init__(self, info: VideoInfo, faces: Tracks, p: Preprocessing):
        self.faces, self.p, self.to_source = faces, p, source_scale(info)

    def __call__(self, start: int, frames: np.ndarray) -> FaceRows:
        f = self.faces
        per_frame = []
        lo, hi = np.searchsorted(f.frame, [start, start + len(frames) + 1]).tolist()
        bounds = np.searchsorted(f.frame[lo:hi], np.arange(start, start + len(frames) + 1)) + lo
        for i in range(len(frames)):
            r = slice(bounds[i], bounds[i + 1])
            per_frame.append((f.track[r], Faces(f.boxes[r], f.scores[r], f.landmarks[r])))
        return face_rows(frames, per_frame, self.to_source, self.p)


def _label_part(source, cfg, work: Work, progress, p: Preprocessing = PREPROCESSING) -> SegmentResult:
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.task.video_task import _limit_malloc_arenas, local_copy, make_decoder, one_core

    _limit_malloc_arenas()
    one_core()
    seg = work.segment
    decoder = make_decoder(cfg.decoder)
    audio_on = np.bool_(cfg.policy.audio)
    mine: dict[str, list[Any]] = {"frame": [], "track": [], "present": [], "box": [], "score": []}
    audio = np.zeros(len(seg), bool)
    with local_copy(source, progress) as path, contextlib.ExitStack() as stack:
        info = decoder.probe(path)
        progress(0, work.hi - work.lo)
        warning = None
        if cfg.face_mode == "centred" and seg.index == 0:
            warning = check_face_centred(path, info, decoder)
        # Work.faces: given in detect mode.
        front = _Given(info, cast(Tracks, work.faces), p) if cfg.face_mode == "detect" else None
        segment_store.discard(work.stale)
        kept = segment_store.open_inputs(work.stored) if front is not None and work.hi == seg.stop else None
        stack.callback(lambda: kept and kept.close())
        upto = seg.start if kept is not None else work.hi  # decoded: the frames before it, or all of them
        chunks: Iterator[InputChunk] = iter(())
        if work.lo < upto:
            chunks = iter_video_inputs(path, info, face_mode=cfg.face_mode, chunk=cfg.chunk_frames, decoder=decoder,
                                       p=p, start=work.lo, stop=upto, front=front, tick=lambda: progress(0))
        if kept is not None:
            f = cast(Tracks, work.faces)
            r = slice(*np.searchsorted(f.frame, [seg.start, seg.stop]))
            chunks = itertools.chain(chunks, segment_store.read_inputs(kept, f.frame[r], f.track[r], seg.start,
                                                                       seg.stop))
        # Frames (and faces) the batches not yet sent still need; each batch goes as soon as its last frame is in.
        faces: dict[tuple[int, int], tuple[np.ndarray, np.bool_]] = {}
        sound: dict[int, tuple[np.ndarray, np.bool_]] = {}
        empty = np.zeros((p.crop_size, p.crop_size, 3), np.uint8)
        ends = [int((b[:, 1] + b[:, 2]).max()) for b in work.batches]
        floor = np.minimum.accumulate([int(b[:, 1].min()) for b in work.batches][::-1])[::-1].tolist() + [work.hi]

        def window(t: int, first: int, length: int) -> dict[str, np.ndarray]:
            fr = range(first, first + length)
            arrays = {"face": np.stack([faces[(x, t)][0] if t != NO_TRACK else empty for x in fr]),
                      "face_mask": np.stack([faces[(x, t)][1] if t != NO_TRACK else np.False_ for x in fr]),
                      "mel": np.stack([sound[x][0] for x in fr]),
                      "audio_mask": np.stack([sound[x][1] for x in fr])}
            return pad_window(arrays, p.window)

        decoded = [work.lo]  # frames decoded so far (read by the heartbeat below)

        def batches() -> Iterator[dict[str, np.ndarray]]:
            nxt, done = 0, work.lo
            for c in chunks:
                f = c.faces
                for r in range(len(f)):
                    x = c.start + int(f.frame[r])
                    faces[(x, int(f.track[r]))] = (f.face[r], f.present[r])
                    if seg.start <= x < seg.stop:
                        for k, v in (("frame", x), ("track", f.track[r]), ("present", f.present[r]),
                                     ("box", f.box[r]), ("score", f.score[r])):
                            mine[k].append(v)
                for i in range(len(c)):
                    sound[c.start + i] = (c.mel[i], c.audio_mask[i] & audio_on)
                a, b = max(c.start, seg.start), min(c.start + len(c), seg.stop)
                if b > a:
                    audio[a - seg.start:b - seg.start] = c.audio_mask[a - c.start:b - c.start]
                done = decoded[0] = c.start + len(c)
                progress(done - work.lo)
                while nxt < len(ends) and ends[nxt] <= done:
                    wins = [window(int(t), int(s), int(n)) for t, s, n in work.batches[nxt]]
                    yield {k: np.stack([w[k] for w in wins]) for k in FIELDS}
                    nxt += 1
                    for key in [k for k in faces if k[0] < floor[nxt]]:
                        del faces[key]
                    for frame_no in [k for k in sound if k < floor[nxt]]:
                        del sound[frame_no]
            if done != work.hi:
                raise BadInputError(Reason.FRAME_COUNT_MISMATCH, f"decoder yielded frames up to {done}, not {work.hi}")
            if nxt != len(ends):
                raise RuntimeError(f"{len(ends) - nxt} batches of segment {seg.index} were never complete")

        with TritonClient(cfg.triton_url, max_in_flight=cfg.max_in_flight) as client:
            probs = []
            for q in client.infer_many(batches(), on_wait=lambda: progress(decoded[0] - work.lo)):
                probs.append(np.asarray(q, np.float32))
                # A heartbeat per answer, not only per chunk: with several segments' requests queued at one
                # Triton on busy cores, a chunk's batches can take longer than the stall limit (measured: a
                # 3-minute video's second wave killed as "decode_stalled" at load 8 on 2 cores).
                progress(decoded[0] - work.lo)
        segment_store.discard(work.stored)  # read to the end (a retry of this task decodes)
    return SegmentResult(seg.index, probs,
                         np.asarray(mine["frame"], np.int32), np.asarray(mine["track"], np.int32),
                         np.asarray(mine["present"], bool), np.asarray(mine["box"], np.float32).reshape(-1, 4),
                         np.asarray(mine["score"], np.float32), audio, warning, upto - work.lo)


def label_segment(source, cfg, work: Work) -> SegmentResult | SegmentFailure:
    """Wave 2: the model inputs of ``work``'s frames and Triton's answers for its batches, in the isolated
    child. A Triton outage raises ServiceUnavailableError (retry later), as ``label_video`` does."""
    from emoframe.workers.task.video_task import run_with_retries

    try:
        return run_with_retries(_label_part, (source, cfg, work), cfg)
    except BadInputError as exc:
        return SegmentFailure(exc.reason, exc.message)


# ---- the stitch -------------------------------------------------------------------------------------------


def stitch(source, cfg, probe: Probe, work: list[Work], results: list[SegmentResult], started: datetime):
    """The frames file of the whole video from the segments' results, then its videos row (last: the record
    that the video is done); returns the VideoOutcome ``label_video`` would."""
    from emoframe.workers.task.video_task import record_labelled, row_base, write_frames

    info, p = probe.info, PREPROCESSING
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != [w.segment.index for w in work]:
        raise RuntimeError("a segment's result is missing")
    cat = {k: np.concatenate([getattr(r, k) for r in results]) for k in ("frame", "track", "present", "box",
                                                                         "score", "audio")}
    if len(cat["audio"]) != info.n_frames:
        raise RuntimeError(f"segments cover {len(cat['audio'])} frames of {info.n_frames}")
    wins, runs = _windows(info.n_frames, cat["frame"], cat["track"], cfg.policy.stride, p, present=cat["present"],
                          box=cat["box"], score=cat["score"], audio=cat["audio"])
    sent = np.concatenate([b for w in work for b in w.batches]) if wins else np.zeros((0, 3), np.int64)
    cut = np.array([(runs[s].track, runs[s].first_frame + st, n) for s, st, n in wins], np.int64).reshape(-1, 3)
    if not np.array_equal(sent, cut):
        raise RuntimeError("the segments' windows differ from the whole video's: faces changed between waves")
    accs: dict[int, WindowAccumulator] = {}
    k = 0
    for w, r in zip(work, results):
        for batch, probs in zip(w.batches, r.probs):
            for j in range(len(batch)):
                s, start, length = wins[k]
                accs.setdefault(s, WindowAccumulator()).add(start, probs[j], length)
                k += 1
    pred = _rows(runs, accs, info.fps, True, cfg.policy)
    outcome = write_frames(source, cfg, info, pred, probe.times, results[0].warning)
    return record_labelled(source, cfg, row_base(source, cfg, started), info, outcome)


# ---- all of it ----------------------------------------------------------------------------------------------

ParallelMap = Callable[[Callable, list[tuple]], list]  # fn, [args, ...] -> [fn(*args), ...], run in parallel


def serial_map(fn: Callable, args: list[tuple]) -> list:
    return [fn(*a) for a in args]


def ray_map(fn: Callable, args: list[tuple], num_cpus: float = 1) -> list:
    """Each call a Ray task of one core (as a video task), all at once; results in order."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=RAY_TASK_RETRIES)(fn)
    return ray.get([remote.remote(*a) for a in args])


# What a video task can get for its segments: ``reserve(extra)`` is a context manager that holds up to ``extra``
# workers beside the task's own for as long as it is open, and yields (workers held, a ParallelMap over them
# and the task's own: its first call runs in the task itself).
Reserve = Callable[[int], ContextManager[tuple[int, ParallelMap]]]


def fixed_workers(extra: int, pmap: ParallelMap = serial_map) -> Reserve:
    """A Reserve that always grants up to ``extra`` workers, run by ``pmap`` (tests, benchmarks)."""
    return lambda want: contextlib.nullcontext((min(want, extra), pmap))


# How long a node other than the video task's keeps its copy of a remote video after a segment's task there
# ends: the gap between the waves (joining the faces, planning the windows) is seconds; the video task ends
# the wait at its end (``_let_go``), and a killed run's lingering copies are swept once it passes.
SEGMENT_COPY_LINGER_S = 300.0


def _on_its_node(fn: Callable, source, cfg, *rest):
    """A segment's Ray task: with a Triton per node, the server of the node it runs on; this node's copy of a
    remote video kept for the video's next wave (the task's own isolated children, its retries included, share
    it too)."""
    from emoframe.workers.output.download_cache import hold
    from emoframe.workers.task.triton_nodes import for_this_node

    if fn is _let_go:
        return fn(source, cfg, *rest)
    with hold(source.uri, source.size_bytes, source.mtime, linger_s=SEGMENT_COPY_LINGER_S):
        return fn(source, for_this_node(cfg), *rest)


def _let_go(source, cfg) -> None:
    """On each segment's node at a video's end: its copy of the video is removed unless still in use."""
    from emoframe.workers.output.download_cache import let_go

    let_go(source.uri, source.size_bytes, source.mtime)


@contextlib.contextmanager
def ray_workers(extra: int, options: dict, wait_s: float = 5.0) -> Iterator[tuple[int, ParallelMap]]:
    """Up to ``extra`` Ray workers of ``options`` (a video task's: ``num_cpus``, ``memory``, maybe a
    ``label_selector``), reserved all at once as a placement group, given back on the way out.

    Why a placement group, not tasks submitted and waited for: a video task blocked in ``ray.get`` lends
    its CPU but keeps its memory. Video tasks that each counted free memory in ``ray.available_resources()``
    (a view that lags), then all waited on segments, could hold every slot's memory between them with no
    room left for a segment: a deadlock. A placement group is granted whole or not at all, atomically; if
    it is not granted within ``wait_s`` (the cluster is busy with other videos), none is held and the video
    is labelled in one task. Segments never wait on anything, so those granted always finish."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": float(options.get("num_cpus", 1)), "memory": float(options.get("memory", 0))}
    free = ray.available_resources()  # a hint only: the group's grant is what counts
    # At least one bundle is asked for: the view lags (a task that just ended may still count as using its
    # CPU), and a hint of none left made a run's first long video go unsplit now and then.
    k = min(extra, max(1, min(int(free.get(r, 0) // v) for r, v in bundle.items() if v > 0)))
    pg = None
    if k >= 1:
        selector = options.get("label_selector")
        pg = placement_group([{r: v for r, v in bundle.items() if v > 0}] * k,
                             bundle_label_selector=[selector] * k if selector else None)
        try:
            ray.get(pg.ready(), timeout=wait_s)
        except GetTimeoutError:
            remove_placement_group(pg)
            pg = None
    if pg is None:
        yield 0, serial_map
        return
    remote = ray.remote(_on_its_node)
    declared = {"num_cpus": bundle["CPU"], "memory": int(bundle["memory"]) or None, "max_retries": RAY_TASK_RETRIES}

    def pmap(fn: Callable, args: list[tuple]) -> list:
        if len(args) - 1 > k:
            raise ValueError(f"{len(args)} calls for {k} reserved workers and this task")
        refs = [remote.options(**declared, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote(fn, *a) for i, a in enumerate(args[1:])]
        try:
            first = fn(*args[0]) if args else None
            return ([first] if args else []) + ray.get(refs)
        except BaseException:
            for r in refs:  # a failed segment fails the video: the others' work is of no use
                with contextlib.suppress(Exception):
                    ray.cancel(r, force=True)
            raise

    try:
        yield k, pmap
    finally:
        remove_placement_group(pg)


def label_in_segments(source, cfg, probe: Probe, segments: list[VideoSegment], pmap: ParallelMap = serial_map,
                      timings: dict[str, float] | None = None):
    """Label one video as ``segments`` (``plan_segments``) with ``pmap``; the same frames file and videos row
    as ``label_video``. Bad input in any segment fails the video with a row, and no frames file is written.
    ``timings``, if given, gets each step's wall seconds. A remote video is downloaded once per node
    (workers/output/download_cache.py): this task holds its node's copy throughout, and at the end lets the
    other nodes' copies go."""
    from emoframe.workers.task.video_task import hold_copy

    with hold_copy(source):
        try:
            outcome = _label_in_segments(source, cfg, probe, segments, pmap, timings)
        except Exception:  # not on a cancellation: no new Ray tasks then (the holds expire on their own)
            _let_go_everywhere(source, cfg, segments, pmap)
            raise
        _let_go_everywhere(source, cfg, segments, pmap)
        return outcome


def _let_go_everywhere(source, cfg, segments: list[VideoSegment], pmap: ParallelMap) -> None:
    """After the last wave: each segment's node removes its copy of a remote video (unless still in use)."""
    from emoframe.workers.output.storage import is_remote

    if is_remote(source.uri) and len(segments) > 1:
        with contextlib.suppress(Exception):  # the copies' lingering holds expire anyway
            pmap(_let_go, [(source, cfg)] * len(segments))


def _label_in_segments(source, cfg, probe: Probe, segments: list[VideoSegment], pmap: ParallelMap,
                       timings: dict[str, float] | None):
    from emoframe.workers.task.video_task import record_failed, row_base

    started = datetime.now(timezone.utc)
    timings = {} if timings is None else timings
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        timings[name] = time.monotonic() - clock
        clock = time.monotonic()

    try:
        tracks = None
        if cfg.face_mode == "detect":
            # Each segment's own frames' model inputs are kept on its node under this video's token, for wave 2
            # (the same bundle, so the same node) to read instead of decoding them again.
            token = secrets.token_hex(8)
            wave = pmap(track_segment, [(source, cfg, s, None, f"{token}-{s.index}") for s in segments])
            if any(isinstance(r, SegmentFailure) for r in wave):  # the video fails: no wave 2 will read them
                for r in wave:  # (this node's; another node's go at their deadline)
                    if isinstance(r, TrackPart):
                        segment_store.discard(r.stored)
            parts = [_unwrap(r) for r in wave]
            step("track")
            tracks = join_tracks(parts, lambda seg, seed: track_segment(source, cfg, seg, seed))
            step("join")
        work = plan_work(probe, cfg, segments, tracks)
        step("plan")
        results = [_unwrap(r) for r in pmap(label_segment, [(source, cfg, w) for w in work])]
        step("label")
    except BadInputError as exc:
        return record_failed(source, cfg, row_base(source, cfg, started), exc)
    outcome = stitch(source, cfg, probe, work, results, started)
    step("stitch")
    outcome.segments = len(segments)
    outcome.retracked = tracks.retracked if tracks is not None else []
    outcome.decoded_twice = sum(r.decoded for r in results) if tracks is not None else 0
    return outcome


def label_split(source, cfg, probe: Probe, reserve: Reserve, timings: dict[str, float] | None = None):
    """``label_video``'s ``split``: ``probe``'s video in as many segments of at least ``cfg.segment_minutes``
    as ``reserve`` grants workers for (beside the calling task's own), or None when it grants none."""
    least = segment_frames(cfg.segment_minutes, probe.info.fps)
    fewest = max(2, cfg.min_segments)  # fewer would be slower than one task (video_job.DEFAULT_MIN_SEGMENTS)
    want = segment_count(probe, probe.info.n_frames, least)
    if want < fewest:
        return None
    with reserve(want - 1) as (extra, pmap):
        count = segment_count(probe, extra + 1, least)
        if count < fewest:
            return None
        segments = plan_segments(probe.info.n_frames, count, cfg.chunk_frames)
        return label_in_segments(source, cfg, probe, segments, pmap, timings)


NO_EXTRA_WORKERS = fixed_workers(0)


def label_long_video(source, cfg, reserve: Reserve = NO_EXTRA_WORKERS):
    """A video that may be long: in segments (``label_split`` with ``reserve``) when it is long enough and
    workers are granted, else in one task (``label_video``)."""
    from emoframe.workers.task.video_task import label_video

    return label_video(source, cfg, split=lambda probe: label_split(source, cfg, probe, reserve))
