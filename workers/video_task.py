"""Everything that happens to one video: decode -> preprocess -> windows -> Triton -> voting -> Parquet.

Bad input ends as a failed row with a reason (the run goes on); a Triton outage raises
ServiceUnavailableError so the caller's retry policy can try again later.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow.fs as pafs

from workers.contract import MODEL_NAME, NUM_CLASSES, PREPROCESSING
from workers.decode import Decoder, DecordDecoder
from workers.errors import BadInputError
from workers.labeling import predict_video
from workers.preprocess import FaceMode, InputChunk, iter_video_inputs
from workers.schema import STATUS_FAILED, STATUS_LABELLED, frames_path, videos_path
from workers.sink import frames_table, resolve, video_row, videos_table, write_atomic
from workers.triton_client import TritonClient


@dataclass(frozen=True)
class LabelConfig:
    """One run's settings, shared by the flow and every task."""

    out: str  # output folder or URI
    run_id: str
    triton_url: str  # gRPC host:port
    model_version: str
    model_name: str = MODEL_NAME
    face_mode: FaceMode = "centred"
    chunk_frames: int = 256  # frames decoded and preprocessed at a time: bounds memory
    max_in_flight: int = 4  # Triton requests outstanding per video


@dataclass(frozen=True)
class Source:
    uri: str  # what the user named: a local path or s3://... / gs://...
    size_bytes: int | None = None
    mtime: str | None = None  # ISO mtime or etag


@dataclass
class VideoOutcome:
    row: dict
    class_counts: list[int] = field(default_factory=lambda: [0] * NUM_CLASSES)
    face_missing: int = 0
    audio_missing: int = 0
    frames_file: str | None = None


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path for decord: the file itself, or a temporary download of a remote object."""
    if "://" not in uri or uri.startswith("file://"):
        yield uri.removeprefix("file://")
        return
    fs, path = pafs.FileSystem.from_uri(uri)
    suffix = os.path.splitext(path)[1][:10]
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="emoframe-") as tmp:
        with fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, tmp, length=1 << 22)
        tmp.flush()
        yield tmp.name


class _MaskTap:
    """Passes chunks through while keeping the per-frame masks the Parquet rows need (O(frames) memory)."""

    def __init__(self, chunks: Iterator[InputChunk]):
        self.chunks = chunks
        self.face: list[np.ndarray] = []
        self.audio: list[np.ndarray] = []
        self.n_faces: list[np.ndarray] = []

    def __iter__(self) -> Iterator[InputChunk]:
        for c in self.chunks:
            self.face.append(c.face_mask.copy())
            self.audio.append(c.audio_mask.copy())
            self.n_faces.append(c.n_faces.copy())
            yield c


def label_video(source: Source, cfg: LabelConfig, *, decoder: Decoder | None = None) -> VideoOutcome:
    started = datetime.now(timezone.utc)
    decoder = decoder or DecordDecoder()
    base = dict(model_name=cfg.model_name, run_id=cfg.run_id, started_at=started, size_bytes=source.size_bytes,
                source_mtime=source.mtime)
    out_fs, out_base = resolve(cfg.out)
    try:
        with local_copy(source.uri) as path:
            info = decoder.probe(path)
            tap = _MaskTap(iter_video_inputs(path, info, face_mode=cfg.face_mode, chunk=cfg.chunk_frames,
                                             decoder=decoder))
            with TritonClient(cfg.triton_url, max_in_flight=cfg.max_in_flight) as client:
                pred = predict_video(tap, info.n_frames, info.fps, client.infer_many, p=PREPROCESSING)
    except BadInputError as exc:
        row = video_row(source.uri, status=STATUS_FAILED, error_reason=exc.reason, error_message=exc.message, **base)
        write_atomic(videos_table([row]), out_fs, videos_path(out_base, cfg.model_version, source.uri))
        return VideoOutcome(row)
    face_mask, audio_mask = np.concatenate(tap.face), np.concatenate(tap.audio)
    table = frames_table(source.uri, info.fps, pred, face_mask, np.concatenate(tap.n_faces), audio_mask,
                         cfg.model_name, cfg.run_id)
    fpath = frames_path(out_base, cfg.model_version, source.uri)
    write_atomic(table, out_fs, fpath)
    row = video_row(source.uri, status=STATUS_LABELLED, duration_s=info.duration_s, fps=info.fps,
                    frame_count=info.n_frames, has_audio=info.has_audio, **base)
    # The videos row is written last: it is the record that this video is done.
    write_atomic(videos_table([row]), out_fs, videos_path(out_base, cfg.model_version, source.uri))
    return VideoOutcome(row, np.bincount(pred.labels, minlength=NUM_CLASSES).tolist(),
                        int((~face_mask).sum()), int((~audio_mask).sum()), fpath)
