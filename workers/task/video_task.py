"""Everything that happens to one video: decode -> preprocess -> windows -> Triton -> voting -> Parquet.

Bad input ends as a failed row with a reason (the run goes on); a Triton outage raises
ServiceUnavailableError so the caller's retry policy can try again later.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ContextManager, cast

import cv2
import numpy as np

from emoframe.workers.spec.contract import NUM_CLASSES, PREPROCESSING, fingerprint
from emoframe.workers.media.decode import Decoder, VideoInfo
from emoframe.workers.spec.errors import RETRYABLE_REASONS, BadInputError, Reason
from emoframe.workers.processes.isolation import Progress, run_isolated
from emoframe.workers.output import download_cache
from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.inference.labeling import Predictions, predict_video
from emoframe.workers.task.progress import VideoProgress
from emoframe.workers.media.preprocess import InputChunk, check_face_centred, iter_video_inputs
from emoframe.workers.spec.schema import STATUS_FAILED, STATUS_LABELLED, frames_path, videos_path
from emoframe.workers.output.rows import remove_frames
from emoframe.workers.output.sink import frames_table, video_row, videos_table, write_atomic
from emoframe.workers.inference.triton_client import TritonClient
from emoframe.workers.inference.windows import FrameCountError
from emoframe.workers.task.video_job import LabelConfig, Source, VideoOutcome

if TYPE_CHECKING:
    from emoframe.workers.task.segments import Probe



def local_copy(source: Source, progress: Progress | None = None) -> ContextManager[str]:
    """A local path for decord: the file itself, or this node's one shared download of a remote object
    (workers/output/download_cache.py), with heartbeats to ``progress`` while it waits or downloads."""
    def tick() -> None:
        if progress is not None:
            progress(0)

    return download_cache.local_copy(source.uri, source.size_bytes, source.mtime, tick)


def hold_copy(source: Source) -> ContextManager[None]:
    """Keeps this node's copy of a remote source while the block runs: the isolated children it starts one
    after another (the probe, segments, retries) share one download."""
    return download_cache.hold(source.uri, source.size_bytes, source.mtime)


class _ProgressTap:
    """Passes chunks through, keeping the frame timestamps the Parquet rows need (O(frames) memory) and
    reporting progress after each chunk (the isolation watchdog's heartbeat)."""

    def __init__(self, chunks: Iterator[InputChunk], progress: Callable[[int], None]):
        self.chunks = chunks
        self.progress = progress
        self.times: list[np.ndarray] = []
        self.done = 0  # frames passed through so far

    def __iter__(self) -> Iterator[InputChunk]:
        for c in self.chunks:
            if c.times is not None:
                self.times.append(c.times.copy())
            self.done = c.start + len(c)
            self.progress(self.done)
            yield c


def make_decoder(spec: str) -> Decoder:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


@dataclass
class _Labelled:
    info: VideoInfo
    outcome: VideoOutcome


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread its own malloc arena; the Triton request threads' MB-sized buffers then
    fragment several arenas and peak RSS grows with video length (measured: 1.27x for 10 vs 1 minute,
    1.18x with 2 arenas). Applies to arenas created from now on, so call it before threads start."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except OSError:
        pass  # not glibc


def one_core() -> None:
    """One core per video task (what the task declares to Ray): OpenCV would otherwise spread over every core
    and fight Triton and the other videos for them. The face networks run on one thread (mtcnn_nets.Net)."""
    cv2.setNumThreads(1)


def _no_progress(n: int, total: int | None = None, /) -> None:
    pass


def _label_frames(source: Source, cfg: LabelConfig, split_minutes: float = 0.0,
                  progress: Progress = _no_progress) -> _Labelled | Probe:
    """Decode, infer, vote and write the frames file. Raises BadInputError / ServiceUnavailableError.
    ``split_minutes`` > 0: a video long enough for ``cfg.min_segments`` segments of that length is not
    labelled here; its ``Probe`` is returned instead (the probe that labelling needs anyway: a short video
    costs nothing more)."""
    _limit_malloc_arenas()
    one_core()
    decoder = make_decoder(cfg.decoder)
    with local_copy(source, progress) as path:
        info = decoder.probe(path)
        if split_minutes > 0:
            from emoframe.workers.task.segments import splittable

            probe = splittable(decoder, path, info, split_minutes, cfg.min_segments)
            if probe is not None:
                return probe
        progress(0, info.n_frames)  # the watchdog scales the overall limit from the length
        warning = check_face_centred(path, info, decoder) if cfg.face_mode == "centred" else None
        tap = _ProgressTap(iter_video_inputs(path, info, face_mode=cfg.face_mode, chunk=cfg.chunk_frames,
                                             decoder=decoder), progress)
        with TritonClient(cfg.triton_url, max_in_flight=cfg.max_in_flight) as client:
            try:
                # Heartbeats while Triton answers, too: on busy cores a queued batch can take longer than the
                # stall limit (4 batches ahead at ~30 ms of Triton CPU per labelled frame, on a fifth of a core).
                infer = functools.partial(client.infer_many, on_wait=lambda: progress(tap.done))
                pred = predict_video(tap, info.n_frames, info.fps, infer, p=PREPROCESSING, policy=cfg.policy)
            except FrameCountError as exc:
                raise BadInputError(Reason.FRAME_COUNT_MISMATCH, str(exc)) from None
    times = np.concatenate(tap.times) if tap.times else None
    outcome = write_frames(source, cfg, info, pred, times, warning)
    return _Labelled(info, outcome)


def write_frames(source: Source, cfg: LabelConfig, info: VideoInfo, pred: Predictions, times: np.ndarray | None,
                 warning: str | None) -> VideoOutcome:
    """One video's frames file (written atomically), and what its videos row will tell about it."""
    table = frames_table(source.uri, info.fps, pred, cfg.model_name, cfg.run_id, times)
    out_fs, out_base = filesystem_for(cfg.out)
    fpath = frames_path(out_base, cfg.model_version, source.uri)
    write_atomic(table, out_fs, fpath)
    counts = np.bincount(pred.labels[pred.evidence], minlength=NUM_CLASSES).tolist()
    face_frames = np.unique(pred.frame[pred.face_present])
    audio_frames = np.unique(pred.frame[pred.audio_present])
    tracks = len(np.unique(pred.track[pred.track >= 0]))
    return VideoOutcome({}, counts, info.n_frames - len(face_frames), info.n_frames - len(audio_frames), fpath,
                        tracks=tracks, warning=warning)


def row_base(source: Source, cfg: LabelConfig, started: datetime) -> dict:
    return dict(model_name=cfg.model_name, run_id=cfg.run_id, started_at=started, size_bytes=source.size_bytes,
                source_mtime=source.mtime, content_hash=source.content_hash)


def record_labelled(source: Source, cfg: LabelConfig, base: dict, info: VideoInfo,
                    outcome: VideoOutcome) -> VideoOutcome:
    """Writes the videos row of a video whose frames file is written: the record that it is done (last)."""
    out_fs, out_base = filesystem_for(cfg.out)
    row = video_row(source.uri, status=STATUS_LABELLED, duration_s=info.duration_s, fps=info.fps,
                    frame_count=info.n_frames, frames_expected=info.frames_expected, has_audio=info.has_audio,
                    width=info.width, height=info.height, face_mode=cfg.face_mode, tracks=outcome.tracks,
                    warning=outcome.warning, policy=cfg.policy, contract=fingerprint(PREPROCESSING), **base)
    write_atomic(videos_table([row]), out_fs, videos_path(out_base, cfg.model_version, source.uri))
    outcome.row = row
    return outcome


def record_failed(source: Source, cfg: LabelConfig, base: dict, error: BadInputError) -> VideoOutcome:
    """Writes a failed videos row, and removes frames an earlier labelling of the file left."""
    out_fs, out_base = filesystem_for(cfg.out)
    row = video_row(source.uri, status=STATUS_FAILED, error_reason=error.reason, error_message=error.message, **base)
    write_atomic(videos_table([row]), out_fs, videos_path(out_base, cfg.model_version, source.uri))
    remove_frames(out_fs, out_base, cfg.model_version, [source.uri])  # labelled once, failed now: no stale labels
    return VideoOutcome(row)


def label_video(source: Source, cfg: LabelConfig,
                split: Callable[[Probe], VideoOutcome | None] | None = None) -> VideoOutcome:
    """Label one video and record it in the videos table; bad input becomes a failed row.

    ``split``: a video long enough for two segments of ``cfg.segment_minutes`` is handed to ``split(probe)``
    (workers/task/segments.label_split), which labels it in segments, or returns None (no free workers): then it is
    labelled here after all, in one task.

    An attempt is charged only when the decoding child died or hung on this file (``RETRYABLE_REASONS``):
    a run interrupted, a worker killed or a Triton outage says nothing about the file, and the next try
    (Prefect's retry, or the next run) starts with the full budget."""
    base = row_base(source, cfg, datetime.now(timezone.utc))
    progress = VideoProgress.shown(source.uri.rsplit("/", 1)[-1]) if cfg.show_progress else VideoProgress("")
    try:
        with hold_copy(source):  # the probe, the segments on this node and any retry: one download
            return _label_with_retries(source, cfg, base, progress, split)
    finally:
        progress.close()


def _label_with_retries(source: Source, cfg: LabelConfig, base: dict, progress: VideoProgress,
                        split: Callable[[Probe], VideoOutcome | None] | None = None) -> VideoOutcome:
    minutes = cfg.segment_minutes if split is not None else 0.0
    try:
        done = run_with_retries(_label_frames, (source, cfg, minutes), cfg, progress)
        if not isinstance(done, _Labelled):  # a Probe: asked for (minutes > 0) only with a split
            outcome = cast("Callable[[Probe], VideoOutcome | None]", split)(done)
            if outcome is not None:
                return outcome
            done = run_with_retries(_label_frames, (source, cfg), cfg, progress)
    except BadInputError as error:
        return record_failed(source, cfg, base, error)
    # The videos row is written last: it is the record that this video is done.
    return record_labelled(source, cfg, base, done.info, done.outcome)


def run_with_retries(fn: Callable[..., Any], args: tuple, cfg: LabelConfig,
                     progress: Progress | None = None) -> Any:
    """``fn(*args, progress=...)`` in the isolated child (unless ``cfg.isolate`` is off), tried again up to
    ``cfg.max_attempts`` times while the child crashes or hangs; the last BadInputError is raised."""
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            if cfg.isolate:
                return run_isolated(fn, args, cfg.limits, progress)
            return fn(*args, progress=progress or _no_progress)
        except BadInputError as exc:
            if exc.reason in RETRYABLE_REASONS and attempt < cfg.max_attempts:
                continue  # a crash or a hang may not repeat
            if exc.reason in RETRYABLE_REASONS:
                raise BadInputError(exc.reason, f"{exc.message} ({attempt} times in a row; gave up)") from None
            raise
    raise AssertionError("unreachable")
