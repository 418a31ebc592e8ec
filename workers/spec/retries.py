"""Who retries what: every retry layer's count and pause, in one place, innermost first.

Each layer retries only what the layers inside it cannot settle: a request Triton did not answer (the gRPC
client), a decoding child that died or hung on a file (the per-video attempts), anything else that escapes a
video task (Prefect), a Ray worker process that died (Ray), and what is worth another run (the ledger). The
README's table is rendered from here (``retries_markdown``; tests/test_house.py keeps them equal).
"""

from __future__ import annotations

from emoframe.workers.spec.errors import RETRYABLE_REASONS, TRANSIENT_REASONS

# gRPC status codes worth another try: server down/restarting, overloaded, or too slow this time. NOT_FOUND
# too: the run checked at its start that the model is served, so a model not found now is being reloaded
# (Triton answers NOT_FOUND while a model is unloaded on a shared server).
TRITON_TRANSIENT_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "NOT_FOUND")
TRITON_REQUEST_RETRIES = 5  # more tries of one request, the pause doubling from TRITON_BACKOFF_S
TRITON_BACKOFF_S = 0.5

VIDEO_ATTEMPTS = 3  # tries of one file whose decoding child crashes or hangs (RETRYABLE_REASONS), in a row

PREFECT_TASK_RETRIES = 3  # more tries of a video task that raised (Triton or storage still unavailable, ...)
PREFECT_RETRY_DELAYS_S = (2, 5, 10)

RAY_TASK_RETRIES = 3  # more tries of a video task (or a segment's) whose Ray worker process died

GCS_RETRY_LIMIT_S = 20.0  # pyarrow's GCS client retries a failing call this long (its default: 15 minutes)


def _backoff_total(retries: int, first_s: float) -> float:
    return sum(first_s * 2**k for k in range(retries))


def retries_markdown() -> str:
    """The README's "who retries what" table."""
    statuses = ", ".join(TRITON_TRANSIENT_STATUSES)
    crash = " or ".join(f"`{r.value}`" for r in sorted(RETRYABLE_REASONS))
    transient = ", ".join(f"`{r.value}`" for r in sorted(TRANSIENT_REASONS))
    delays = ", ".join(f"{d:g}" for d in PREFECT_RETRY_DELAYS_S[:-1]) + f" and {PREFECT_RETRY_DELAYS_S[-1]:g} s"
    rows = [
        ("Triton gRPC client", "one request", f"{statuses} (a model being reloaded)",
         f"{TRITON_REQUEST_RETRIES} more, {TRITON_BACKOFF_S:g} s doubling "
         f"({_backoff_total(TRITON_REQUEST_RETRIES, TRITON_BACKOFF_S):g} s in all)",
         "`workers/inference/triton_client.py`"),
        ("per-video attempts", "the video, at once", f"the decoding child crashed or hung ({crash})",
         f"{VIDEO_ATTEMPTS} in a row, then failed with the last error", "`workers/task/video_task.py`"),
        ("Prefect task", "the video task (a video, or a bundle of small ones: what it had not finished)",
         "anything that escapes a video: Triton unavailable after the client's retries, storage errors",
         f"{PREFECT_TASK_RETRIES} more, after {delays}; on the last try such a video gets its failed row and "
         "the bundle goes on", "`flows/run/label_archive.py`"),
        ("Ray", "the video task, or one segment's", "its worker process died",
         f"{RAY_TASK_RETRIES} more; after that each of its videos not labelled gets an `internal_error` row",
         "`flows/run/label_archive.py`, `workers/task/segments.py`"),
        ("GCS client (pyarrow)", "one storage call", "any error of a `gs://` call",
         f"for {GCS_RETRY_LIMIT_S:g} s, then the Prefect task's retries", "`workers/output/storage.py`"),
        ("the next run", "the video", transient, "every run, while the file is unchanged",
         "`flows/archive/ledger.py`"),
    ]
    lines = ["| layer | retries | on | how often | where |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
