"""What is already done, read from the output itself (the videos table), not from Prefect's result cache
(whose default key includes the flow run, so a crashed run would recompute everything)."""

from __future__ import annotations

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from workers.policy import LabellingPolicy
from workers.schema import STATUS_LABELLED, VIDEOS_SCHEMA, partition
from workers.sink import resolve
from workers.video_task import Source

# Failures that say nothing about the file: try again on the next run even if it is unchanged. An overall
# timeout says the machine was slower than the limit assumed (or the limit was set too low).
TRANSIENT_REASONS = frozenset({"triton_unavailable", "internal_error", "decode_timeout"})


def read_ledger(out: str, model_version: str) -> dict[str, dict]:
    """source_uri -> its videos row, for this model version; empty when nothing was written yet."""
    fs, base = resolve(out)
    folder = f"{base.rstrip('/')}/videos/{partition(model_version)}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return {}
    table = ds.dataset(folder, filesystem=fs, format="parquet", schema=VIDEOS_SCHEMA).to_table(
        columns=["source_uri", "status", "error_reason", "size_bytes", "source_mtime", "face_mode", "stride",
                 "vote_seconds", "audio_used"])
    return {r["source_uri"]: r for r in table.to_pylist()}


def is_done(source: Source, row: dict | None, policy: LabellingPolicy, face_mode: str) -> bool:
    """Labelled with this face mode and labelling policy (or failed for a reason of its own) by this model
    version, and unchanged since. A row without a policy (written before schema version 3) is labelled again."""
    if row is None or row["size_bytes"] != source.size_bytes or row["source_mtime"] != source.mtime:
        return False
    if row["status"] == STATUS_LABELLED:
        return (row["face_mode"], row["stride"], row["vote_seconds"], row["audio_used"]) == \
            (face_mode, policy.stride, policy.vote_seconds, policy.audio)
    return row["error_reason"] not in TRANSIENT_REASONS
