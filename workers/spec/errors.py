"""Error types and failure reasons. The split that matters to the flow: bad input is permanent (record a
failed row, move on), a service that is down is transient (retry with backoff).

A failed row's ``error_reason`` is one of ``Reason``: the one list that isolation, the video task, the ledger,
the flow and the README's table (rendered from ``REASON_HELP``) share."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a video failed. Stored as its value in ``videos.error_reason``."""

    NOT_FOUND = "not_found"
    EMPTY_FILE = "empty_file"
    NOT_A_VIDEO = "not_a_video"
    TRUNCATED = "truncated"
    UNSUPPORTED_CODEC = "unsupported_codec"
    BAD_FPS = "bad_fps"
    CORRUPT_FRAMES = "corrupt_frames"
    DECODE_ERROR = "decode_error"
    AUDIO_DECODE_ERROR = "audio_decode_error"
    FRAME_COUNT_MISMATCH = "frame_count_mismatch"
    DECODE_CRASH = "decode_crash"
    DECODE_STALLED = "decode_stalled"
    DECODE_TIMEOUT = "decode_timeout"
    TOO_LARGE = "too_large"
    TRITON_UNAVAILABLE = "triton_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL_ERROR = "internal_error"


REASON_HELP: dict[Reason, str] = {
    Reason.NOT_FOUND: "the file was gone when its task read it (deleted after the listing)",
    Reason.EMPTY_FILE: "0 bytes",
    Reason.NOT_A_VIDEO: "no container FFmpeg knows, or no video stream (an audio-only file)",
    Reason.TRUNCATED: "cut short before anything could be decoded (an MP4 without its index, a box past the end)",
    Reason.UNSUPPORTED_CODEC: "a video codec this FFmpeg build cannot decode",
    Reason.BAD_FPS: "the stream reports an unusable frame rate (0, negative, absurd)",
    Reason.CORRUPT_FRAMES: "damaged frames in the middle that the decoder could only replace by earlier ones; "
                           "re-encode",
    Reason.DECODE_ERROR: "another error of the decoder",
    Reason.AUDIO_DECODE_ERROR: "the audio track could not be read",
    Reason.FRAME_COUNT_MISMATCH: "the decoded frames and their timestamps (or a segment's frames) "
                                 "disagree on the count",
    Reason.DECODE_CRASH: "the decoding child process died (tried again, up to the attempt limit)",
    Reason.DECODE_STALLED: "the decoding child made no progress for the stall limit (tried again)",
    Reason.DECODE_TIMEOUT: "over the overall limit per video (--min-fps, --video-timeout)",
    Reason.TOO_LARGE: "the decoding child was killed, most likely out of memory (over its cap)",
    Reason.TRITON_UNAVAILABLE: "Triton could not be reached after the retries",
    Reason.STORAGE_UNAVAILABLE: "the storage could not be read or written after the retries",
    Reason.INTERNAL_ERROR: "an error of emoframe itself; the message has the last error",
}

# A crash or a hang may be the machine's fault rather than the file's: worth another attempt in the same run.
RETRYABLE_REASONS = frozenset({Reason.DECODE_CRASH, Reason.DECODE_STALLED})
# Failures that say nothing about the file: tried again on the next run even if it is unchanged. An overall
# timeout says the machine was slower than the limit assumed (or the limit was set too low); a file that
# vanished between listing and reading (not_found) may be back, or re-uploaded, next time.
TRANSIENT_REASONS = frozenset({Reason.TRITON_UNAVAILABLE, Reason.STORAGE_UNAVAILABLE, Reason.INTERNAL_ERROR,
                               Reason.DECODE_TIMEOUT, Reason.NOT_FOUND})


def reasons_markdown() -> str:
    """The README's table of failure reasons."""
    rows = ["| reason | what happened | next run |", "|---|---|---|"]
    for r in Reason:
        rows.append(f"| `{r}` | {REASON_HELP[r]} | "
                    f"{'tried again' if r in TRANSIENT_REASONS else 'done, unless the file changes'} |")
    return "\n".join(rows)


class EmoframeError(Exception):
    """Base class for errors emoframe raises on purpose."""


class BadInputError(EmoframeError):
    """The input itself is unusable; retrying will not help. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: Reason | str, message: str):
        self.reason = Reason(reason)  # a reason outside the list is a bug here, not a new code in the output
        self.message = message
        super().__init__(f"{self.reason}: {message}")

    def __reduce__(self):  # pickled whole (Ray, multiprocessing): rebuilt from reason and message, not args
        return (type(self), (str(self.reason), self.message))


class ServiceUnavailableError(EmoframeError):
    """A service (Triton, storage) could not be reached or is not ready; worth retrying later."""


class ContractMismatchError(EmoframeError):
    """The served model expects different inputs than this client prepares (a different contract)."""


class StorageUnavailableError(ServiceUnavailableError):
    """The storage holding a source or the output could not be read or written; worth retrying later."""
