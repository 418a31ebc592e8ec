"""Writing Parquet so that no reader ever sees half a file: write to a hidden temporary name beside the
target, then rename into place (atomic on a local filesystem; on object stores the upload itself is
atomic and the rename is copy + delete of a name no reader globs)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.storage import filesystem_for

from workers.contract import CLASSES, NUM_CLASSES
from workers.labeling import FramePredictions
from workers.schema import FRAMES_SCHEMA, PROB_COLUMNS, SCHEMA_VERSION, VIDEOS_SCHEMA, video_id


def resolve(dest: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or a URI (s3://, gs://, file://)."""
    return filesystem_for(dest)


def write_atomic(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"  # not *.parquet and hidden: never globbed
    try:
        with fs.open_output_stream(tmp) as f:
            pq.write_table(table, f, compression="zstd")
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except (OSError, FileNotFoundError):
            pass
        raise


def frames_table(source_uri: str, fps: float, pred: FramePredictions, face_mask: np.ndarray, n_faces: np.ndarray,
                 audio_mask: np.ndarray, model_name: str, run_id: str, times: np.ndarray | None = None) -> pa.Table:
    n = len(pred.labels)
    if not (len(face_mask) == len(audio_mask) == len(n_faces) == n) or pred.probs.shape != (n, NUM_CLASSES) or (
            times is not None and len(times) != n):
        raise ValueError(f"per-frame arrays disagree on the frame count ({n})")
    idx = np.arange(n, dtype=np.int32)
    cols = {
        "video_id": pa.array([video_id(source_uri)] * n, pa.string()),
        "source_uri": pa.array([source_uri] * n, pa.string()),
        "frame_index": idx,
        "timestamp_s": times if times is not None else idx / float(fps),
        "label": pa.array(np.asarray(CLASSES, dtype=object)[pred.labels]),
        "label_id": pred.labels.astype(np.int8),
        "confidence": pred.confidence.astype(np.float32),
        **{c: pred.probs[:, i].astype(np.float32) for i, c in enumerate(PROB_COLUMNS)},
        "face_present": face_mask.astype(bool),
        "faces_detected": n_faces.astype(np.int16),
        "audio_present": audio_mask.astype(bool),
        "model_name": pa.array([model_name] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.table(cols, schema=FRAMES_SCHEMA)


def video_row(source_uri: str, *, status: str, model_name: str, run_id: str, started_at: datetime,
              size_bytes: int | None = None, source_mtime: str | None = None, duration_s: float | None = None,
              fps: float | None = None, frame_count: int | None = None, has_audio: bool | None = None,
              error_reason: str | None = None, error_message: str | None = None) -> dict:
    finished = datetime.now(timezone.utc)
    return {
        "video_id": video_id(source_uri), "source_uri": source_uri, "size_bytes": size_bytes,
        "source_mtime": source_mtime, "duration_s": duration_s, "fps": fps, "frame_count": frame_count,
        "has_audio": has_audio, "status": status, "error_reason": error_reason, "error_message": error_message,
        "model_name": model_name, "processing_s": (finished - started_at).total_seconds(), "run_id": run_id,
        "started_at": started_at, "finished_at": finished, "schema_version": SCHEMA_VERSION,
    }


def videos_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=VIDEOS_SCHEMA)
