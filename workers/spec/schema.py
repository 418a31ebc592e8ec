"""The Parquet output: schemas (defined once, versioned) and the layout of the output folder.

    <out>/frames/model_version=<v>/<video_key>.parquet   one row per face and frame (and per face-less frame)
    <out>/videos/model_version=<v>/<video_key>.parquet   one row: that video's latest run (labelled or failed)

``model_version`` is a Hive partition key (a path segment, not a column in the files): read with
``read_parquet('<out>/frames/**/*.parquet', hive_partitioning=true)`` in DuckDB or ``pyarrow.dataset``
with ``partitioning="hive"``. A rerun writes the same file names, so it replaces, never duplicates.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

import pyarrow as pa

from emoframe.workers.spec.contract import CLASSES

# 2: one frames row per face and frame with track id, box and detection score (1 had one row per frame and
#    labelled only the largest face); no label where a frame has neither a face nor audio; videos gain
#    width, height, face_mode, tracks and warning. Version 1 files read beside version 2 with
#    union_by_name (their new columns read as NULL): see README "Reading version 1 output".
# 3: videos gain the run's labelling policy (stride, vote_seconds, audio_used); frames unchanged, except that
#    with audio_used false a frame without a face has no label even where audio_present is true.
# 4: videos gain content_hash (the same file under a new name is recognised), contract (the model's
#    input contract fingerprint: part of "already done"), and rows of status "skipped" for files seen
#    but not labelled (not a video, hidden, special files), so every file a run sees is accounted for;
#    frames_expected (the frames the container declares, beside frame_count, the frames decoded).
# 5: frames gain timestamp_us, the presentation time in integer microseconds (exact: joins and equality
#    filters without float rounding); NULL when older files are read or compacted beside newer ones.
SCHEMA_VERSION = 5
SCHEMA_METADATA = {b"emoframe.schema_version": str(SCHEMA_VERSION).encode()}
PARTITION_KEY = "model_version"


def prob_column(name: str) -> str:
    return "prob_" + name.lower()


PROB_COLUMNS = tuple(prob_column(c) for c in CLASSES)

FRAMES_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),  # the frame's presentation (start) time
        pa.field("timestamp_us", pa.int64()),  # the same, in integer microseconds (schema version 5 on)
        pa.field("track_id", pa.int32()),  # the face followed across frames; NULL on a row of a face-less frame
        pa.field("face_present", pa.bool_(), nullable=False),
        # The face's box in pixels of the decoded frame (x, y of the top-left corner); NULL without a face.
        pa.field("box_x", pa.float32()),
        pa.field("box_y", pa.float32()),
        pa.field("box_w", pa.float32()),
        pa.field("box_h", pa.float32()),
        pa.field("det_score", pa.float32()),  # detector's face probability; NULL for face-centred input
        pa.field("faces_detected", pa.int16(), nullable=False),  # faces in this frame
        pa.field("audio_present", pa.bool_(), nullable=False),  # the video has sound here (heard or not)
        # NULL where the model had no evidence: no face, and no audio it heard (videos.audio_used).
        pa.field("label", pa.string()),
        pa.field("label_id", pa.int8()),
        pa.field("confidence", pa.float32()),  # the label's probability after voting
        *[pa.field(c, pa.float32()) for c in PROB_COLUMNS],
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata=SCHEMA_METADATA,
)

VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("source_mtime", pa.string()),  # ISO time or etag: what "unchanged since" is checked against
        # "<size>:<sha256 of the first and last MiB>": the same content under another name (storage.py).
        pa.field("content_hash", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("frame_count", pa.int32()),  # frames decoded and labelled
        # Frames the container declares (its index, less frames an edit list hides); NULL where it declares no
        # count (Matroska/WebM, MPEG-TS) and on failed rows. Above frame_count: frames were lost (file cut short).
        pa.field("frames_expected", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("has_audio", pa.bool_()),
        pa.field("face_mode", pa.string()),  # "detect" (raw footage) or "centred" (face-centred input)
        pa.field("tracks", pa.int32()),  # face tracks found
        pa.field("warning", pa.string()),  # something the user should check, e.g. input not face-centred
        # The run's labelling policy (workers/spec/policy.py); NULL on a failed row and in files before version 3.
        pa.field("stride", pa.int32()),
        pa.field("vote_seconds", pa.float64()),
        pa.field("audio_used", pa.bool_()),  # whether the model heard the audio
        pa.field("contract", pa.string()),  # fingerprint of the served model's input contract (labelled rows)
        pa.field("status", pa.string(), nullable=False),  # "labelled", "failed" or "skipped"
        # A short code, e.g. "not_a_video", "empty_file", "triton_unavailable"; for "skipped", why it was not tried.
        pa.field("error_reason", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("processing_s", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("schema_version", pa.int16(), nullable=False),
    ],
    metadata=SCHEMA_METADATA,
)

STATUS_LABELLED = "labelled"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"  # seen by a run but not a video it labels; error_reason says why


def video_id(source_uri: str) -> str:
    """Stable id of a source: the same URI always gets the same id (and so the same output file)."""
    return hashlib.sha1(source_uri.encode("utf-8")).hexdigest()[:16]


def video_key(source_uri: str) -> str:
    """Output file stem: a readable, filesystem-safe slug of the file name plus the id.

    Only the last path segment is used and every character outside [A-Za-z0-9._-] is replaced, so no
    input name (``..`` segments, slashes, unicode) can make output land outside the destination.
    """
    stem = PurePosixPath(source_uri.replace("\\", "/")).name.rsplit(".", 1)[0]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_.")[:60] or "video"
    return f"{slug}-{video_id(source_uri)}"


def partition(model_version: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", model_version):
        raise ValueError(f"model version {model_version!r} is not a safe partition value")
    return f"{PARTITION_KEY}={model_version}"


def table_folder(base: str, table: str, model_version: str) -> str:
    """``<out>/<table>/model_version=<v>``: the folder of one table's files for one model version."""
    return f"{base.rstrip('/')}/{table}/{partition(model_version)}"


def frames_path(base: str, model_version: str, source_uri: str) -> str:
    return f"{table_folder(base, 'frames', model_version)}/{video_key(source_uri)}.parquet"


def videos_path(base: str, model_version: str, source_uri: str) -> str:
    return f"{table_folder(base, 'videos', model_version)}/{video_key(source_uri)}.parquet"
