"""What a video task is given and what it gives back: plain data, no heavy imports, so that the driver
(listing, the ledger, the run summary, a rerun with nothing to do) never loads torch or the decoders."""

from __future__ import annotations

from dataclasses import dataclass, field

from emoframe.workers.spec.contract import MODEL_NAME, NUM_CLASSES, FaceMode
from emoframe.workers.processes.isolation import Limits
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.spec.retries import VIDEO_ATTEMPTS

# Shorter segments: their fixed costs (a probe, a 512-frame tracker warm-up, the sound decoded from the start)
# weigh more than the parallelism gains (benchmarks/long_video.py).
DEFAULT_SEGMENT_MINUTES = 2.0
# A video is split into no fewer segments than this. One task already keeps about 1.7 cores busy (decoding a
# chunk ahead, Triton answering beside it), and a split's two waves do not overlap Triton's work with decoding:
# on 2 cores a 10-minute video took 1.16x one task's time in 2 segments, its CPU 1.17x (docs/long_video.json at
# 16218b7; 0.66x the time of one task held to one core);
# from 3 workers on the split can be the faster.
DEFAULT_MIN_SEGMENTS = 3


@dataclass(frozen=True)
class LabelConfig:
    """One run's settings, shared by the flow and every task."""

    out: str  # output folder or URI
    run_id: str
    triton_url: str  # gRPC host:port ("" with a server per node: the task takes its node's from triton_nodes)
    model_version: str
    model_name: str = MODEL_NAME
    face_mode: FaceMode = "detect"
    policy: LabellingPolicy = POLICY  # stride, voting span, audio on/off: recorded in the videos row
    chunk_frames: int = 256  # frames decoded and preprocessed at a time: bounds memory
    max_in_flight: int = 4  # Triton requests outstanding per video
    decoder: str = "emoframe.workers.media.decode:VideoDecoder"  # "module:Class"; tests inject faulty decoders here
    isolate: bool = True  # run each video in a child process under `limits` (see workers/processes/isolation.py)
    limits: Limits = Limits()
    show_progress: bool = True  # a bar per video (Ray's tqdm in a worker) and a Prefect progress artifact
    # With a Triton per Ray node (workers/task/triton_nodes.py): (node id, gRPC URL on that node's loopback) pairs.
    triton_nodes: tuple[tuple[str, str], ...] = ()
    max_attempts: int = VIDEO_ATTEMPTS  # tries of a file whose decoding child crashes or hangs; then it failed
    # A video of at least ``min_segments`` segments of this many minutes is labelled in segments by parallel
    # tasks when the cluster has that many workers free (workers/task/segments.py; the same rows as one task);
    # 0 = never split.
    segment_minutes: float = DEFAULT_SEGMENT_MINUTES
    min_segments: int = DEFAULT_MIN_SEGMENTS  # fewer workers free: one task labels it (see above)


@dataclass(frozen=True)
class Source:
    uri: str  # what the user named: a local path or s3://... / gs://...
    size_bytes: int | None = None
    mtime: str | None = None  # ISO mtime or etag
    content_hash: str | None = None  # storage.content_fingerprint: recognises the same file under a new name


@dataclass
class VideoOutcome:
    row: dict
    class_counts: list[int] = field(default_factory=lambda: [0] * NUM_CLASSES)
    face_missing: int = 0  # frames without any face
    audio_missing: int = 0
    frames_file: str | None = None
    tracks: int = 0
    warning: str | None = None
    segments: int = 1  # tasks that labelled it in parallel (workers/task/segments.py)
    retracked: list[int] = field(default_factory=list)  # segments tracked again from their predecessor's state
    decoded_twice: int = 0  # frames a split video's second wave decoded again (the rest were kept by the first)
