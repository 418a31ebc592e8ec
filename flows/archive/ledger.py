"""What is already done, read from the output itself (the videos table), not from Prefect's result cache
(whose default key includes the flow run, so a crashed run would recompute everything).

A labelled row counts as done for a source when the file is unchanged (size and mtime or ETag) and the row
was made the way this run would make it: same model version (the partition read), same input contract,
face mode and labelling policy. A failed row counts as done unless its reason says nothing about the file
(``TRANSIENT_REASONS``). A file under a new name whose content matches a labelled row is recognised by its
content fingerprint (workers/output/storage.content_fingerprint), so a moved or renamed file is not labelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from emoframe.workers.spec.errors import TRANSIENT_REASONS
from emoframe.workers.spec.policy import LabellingPolicy
from emoframe.workers.spec.schema import (STATUS_FAILED, STATUS_LABELLED, STATUS_SKIPPED, VIDEOS_SCHEMA,
                                         table_folder)
from emoframe.workers.output.storage import filesystem_for
from emoframe.workers.task.video_job import Source


_COLUMNS = ["source_uri", "status", "error_reason", "error_message", "size_bytes", "source_mtime", "content_hash",
            "face_mode", "stride", "vote_seconds", "audio_used", "contract", "run_id"]


@dataclass(frozen=True)
class DoneKey:
    """How a run labels: a labelled row made another way is labelled again."""

    face_mode: str
    policy: LabellingPolicy
    contract: str

    def matches(self, row: dict) -> bool:
        return (row["face_mode"], row["stride"], row["vote_seconds"], row["audio_used"], row["contract"]) == \
            (self.face_mode, self.policy.stride, self.policy.vote_seconds, self.policy.audio, self.contract)


@dataclass
class Ledger:
    rows: dict[str, dict] = field(default_factory=dict)  # source_uri -> its videos row
    _by_content: dict[str, list[dict]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_content = {}
        for row in self.rows.values():
            if row["content_hash"] and row["status"] == STATUS_LABELLED:
                self._by_content.setdefault(row["content_hash"], []).append(row)

    def get(self, uri: str) -> dict | None:
        return self.rows.get(uri)

    def is_done(self, source: Source, key: DoneKey) -> bool:
        row = self.rows.get(source.uri)
        if row is None or row["status"] == STATUS_SKIPPED:
            return False
        if row["size_bytes"] != source.size_bytes or row["source_mtime"] != source.mtime:
            return False
        if row["status"] == STATUS_LABELLED:
            return key.matches(row)
        return row["error_reason"] not in TRANSIENT_REASONS

    def earlier_failure(self, source: Source, key: DoneKey) -> dict | None:
        """The failed row that makes ``source`` done (a failure of an earlier run, unchanged file), or None."""
        row = self.rows.get(source.uri)
        if row is not None and row["status"] == STATUS_FAILED and self.is_done(source, key):
            return row
        return None

    def same_content(self, content_hash: str | None, key: DoneKey, uri: str) -> dict | None:
        """A labelled row of another source with this content, made the way ``key`` says, or None."""
        if content_hash is None:
            return None
        return next((r for r in self._by_content.get(content_hash, ()) if r["source_uri"] != uri and key.matches(r)),
                    None)


def read_ledger(out: str, model_version: str) -> Ledger:
    """The videos rows of this model version; empty when nothing was written yet. Rows of files written
    before schema version 4 read their new columns as NULL (and are then labelled again: no contract)."""
    fs, base = filesystem_for(out)
    folder = table_folder(base, "videos", model_version)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return Ledger()
    table = ds.dataset(folder, filesystem=fs, format="parquet", schema=VIDEOS_SCHEMA).to_table(columns=_COLUMNS)
    return Ledger({r["source_uri"]: r for r in table.to_pylist()})
