"""Writing Parquet so that no reader ever sees half a file: write to a hidden temporary name beside the
target, then rename into place (atomic on a local filesystem; on object stores the upload itself is
atomic and the rename is copy + delete of a name no reader globs)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emoframe.workers.spec.contract import CLASSES, NUM_CLASSES
from emoframe.workers.spec.policy import LabellingPolicy
from emoframe.workers.spec.schema import FRAMES_SCHEMA, PROB_COLUMNS, SCHEMA_VERSION, VIDEOS_SCHEMA, video_id

if TYPE_CHECKING:  # emoframe.workers.inference.labeling pulls in torch; the driver writes rows without it
    from emoframe.workers.inference.labeling import Predictions


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


def clean_seconds(t: np.ndarray) -> np.ndarray:
    """Times rounded to the microsecond, without a negative zero: 0.3 reads as 0.3 (not 0.30000000000000004)
    and a first frame at -0.0 as 0.0, so equality filters and group-bys on timestamp_s behave. A microsecond
    is far below any frame interval (8,333 us at 120 fps)."""
    return np.round(np.asarray(t, dtype=np.float64), 6) + 0.0


def frames_table(source_uri: str, fps: float, pred: Predictions, model_name: str, run_id: str,
                 times: np.ndarray | None = None) -> pa.Table:
    """The frames rows of one video: one per face and frame, one per face-less frame. A row whose frame has
    no evidence (no face, and no audio the model heard) gets no label (NULL label, id, confidence, probabilities)."""
    n = len(pred)
    if pred.probs.shape != (n, NUM_CLASSES):
        raise ValueError(f"probabilities of shape {pred.probs.shape} for {n} rows")
    if times is not None and (len(pred) and pred.frame.max() >= len(times)):
        raise ValueError(f"a row's frame index {pred.frame.max()} is past the {len(times)} frame timestamps")
    evidence = pred.evidence
    faced = pred.face_present  # a masked frame of face-centred input belongs to track 0 but shows no face
    faces = np.bincount(pred.frame[pred.face_present], minlength=int(pred.frame.max()) + 1 if n else 0)
    labels = pred.labels.astype(np.int64)

    def masked(a: np.ndarray, keep: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.array(a, typ, mask=~keep)

    seconds = clean_seconds(times[pred.frame] if times is not None else pred.frame / float(fps))
    cols = {
        "video_id": pa.array([video_id(source_uri)] * n, pa.string()),
        "source_uri": pa.array([source_uri] * n, pa.string()),
        "frame_index": pred.frame.astype(np.int32),
        "timestamp_s": seconds,
        "timestamp_us": np.round(seconds * 1e6).astype(np.int64),
        "track_id": masked(pred.track, faced, pa.int32()),
        "face_present": pred.face_present,
        **{f"box_{k}": masked(pred.box[:, i], faced & np.isfinite(pred.box[:, i]), pa.float32())
           for i, k in enumerate("xywh")},
        "det_score": masked(pred.score, faced & np.isfinite(pred.score), pa.float32()),
        "faces_detected": faces[pred.frame].astype(np.int16) if n else np.zeros(0, np.int16),
        "audio_present": pred.audio_present,
        "label": masked(np.asarray(CLASSES, dtype=object)[labels], evidence, pa.string()),
        "label_id": masked(labels.astype(np.int8), evidence, pa.int8()),
        "confidence": masked(pred.confidence.astype(np.float32), evidence, pa.float32()),
        **{c: masked(pred.probs[:, i].astype(np.float32), evidence, pa.float32()) for i, c in enumerate(PROB_COLUMNS)},
        "model_name": pa.array([model_name] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.table(cols, schema=FRAMES_SCHEMA)


def video_row(source_uri: str, *, status: str, model_name: str, run_id: str, started_at: datetime,
              size_bytes: int | None = None, source_mtime: str | None = None, content_hash: str | None = None,
              contract: str | None = None, duration_s: float | None = None,
              fps: float | None = None, frame_count: int | None = None, frames_expected: int | None = None,
              has_audio: bool | None = None,
              width: int | None = None, height: int | None = None, face_mode: str | None = None,
              tracks: int | None = None, warning: str | None = None, policy: LabellingPolicy | None = None,
              error_reason: str | None = None, error_message: str | None = None) -> dict:
    finished = datetime.now(timezone.utc)
    return {
        "video_id": video_id(source_uri), "source_uri": source_uri, "size_bytes": size_bytes,
        "source_mtime": source_mtime, "content_hash": content_hash, "contract": contract,
        "duration_s": duration_s, "fps": fps, "frame_count": frame_count, "frames_expected": frames_expected,
        "width": width, "height": height, "has_audio": has_audio, "face_mode": face_mode, "tracks": tracks,
        "warning": warning, "stride": policy.stride if policy else None,
        "vote_seconds": policy.vote_seconds if policy else None, "audio_used": policy.audio if policy else None,
        "status": status, "error_reason": error_reason, "error_message": error_message,
        "model_name": model_name, "processing_s": (finished - started_at).total_seconds(), "run_id": run_id,
        "started_at": started_at, "finished_at": finished, "schema_version": SCHEMA_VERSION,
    }


def videos_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=VIDEOS_SCHEMA)
