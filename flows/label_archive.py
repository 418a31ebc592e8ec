"""The `label_archive` Prefect flow: list sources, fan out one Ray task per video, record the run.

Triton is either the embedded server (started here, on 127.0.0.1, for the flow's lifetime) or a URL.
Ray is either a local `ray.init()` or the cluster at `ray_address`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner

from flows.ledger import is_done, read_ledger
from flows.preflight import PreflightError, check_uris, preflight
from flows.prefect_api import prefect_api
from flows.ray_runtime import tighten_token_file, worker_env
from flows.sources import list_sources
from flows.terminal import shown
from workers.contract import CLASSES, PREPROCESSING
from workers.errors import ServiceUnavailableError
from workers.faces.weights import MTCNN_WEIGHTS, require
from workers.isolation import Limits
from workers.lifeline import sweep
from workers.policy import POLICY, LabellingPolicy
from workers.schema import STATUS_FAILED, videos_path
from workers.sink import resolve, video_row, videos_table, write_atomic
from workers.triton_client import TritonClient
from workers.video_task import LabelConfig, Source, VideoOutcome, label_video

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = REPO_ROOT / "model_repo"
TASK_RETRIES = 3


# Videos finished (labelled or failed, and recorded) by flows run in this process: what an interrupted CLI
# run reports. Process-local on purpose: it is read by the process the user interrupted.
finished_in_this_process = 0


@task(retries=TASK_RETRIES, retry_delay_seconds=[2, 5, 10], persist_result=False,
      task_run_name="label {source.uri}")
def label_one(source: Source, cfg: LabelConfig) -> VideoOutcome:
    """One video. Bad input returns a failed row; anything that escapes (Triton down, a crash) is retried."""
    return label_video(source, cfg)


@task(persist_result=False, task_run_name="check storage from a worker")
def worker_access(out: str, source: str | None) -> str | None:
    """From a Ray worker, not the driver: can the cluster write the output and read a source? A worker on
    another node may lack the driver's credentials or network. Returns what is wrong, or None."""
    from flows.preflight import PreflightError, check_output

    try:
        check_output(out)
        if source is not None:
            fs, path = resolve(source)
            with fs.open_input_file(path) as f:
                f.read(1)
    except PreflightError as exc:
        return f"a Ray worker: {exc}"
    except OSError as exc:
        return f"a Ray worker cannot reach the storage: {shown(str(exc).splitlines()[0])}"
    return None


@dataclass
class RunSummary:
    run_id: str
    out: str
    model_version: str
    policy: LabellingPolicy = POLICY
    outcomes: list[VideoOutcome] = field(default_factory=list)
    skipped_not_video: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        return sum(o.row["status"] == "labelled" for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.row["status"] == STATUS_FAILED for o in self.outcomes)

    def format(self) -> str:
        lines = [f"run {self.run_id}: {self.labelled} labelled, {self.failed} failed, "
                 f"{len(self.already_done)} already done (unchanged, same settings; --force relabels), "
                 f"{len(self.skipped_not_video)} skipped (not a video), {len(self.missing)} not found"]
        for o in sorted(self.outcomes, key=lambda o: o.row["source_uri"]):
            r = o.row
            name = shown(r["source_uri"].rsplit("/", 1)[-1])
            if r["status"] != "labelled":
                lines.append(f"  FAILED {name}: {r['error_reason']}: {shown(r['error_message'])}")
                continue
            n = r["frame_count"]
            rows = sum(o.class_counts) or 1  # labelled rows: one per face and frame, and audio-only frames
            shares = sorted(((c / rows, CLASSES[i]) for i, c in enumerate(o.class_counts) if c), reverse=True)
            share_txt = ", ".join(f"{cls} {s:.0%}" for s, cls in shares) or "no label (no face, no audio heard)"
            audio = "no audio track" if not r["has_audio"] else f"audio missing {o.audio_missing} frames"
            lines.append(f"  {name}: {n} frames, {r['duration_s']:.1f} s | {share_txt} | {o.tracks} face "
                         f"track(s), no face in {o.face_missing} frames, {audio}")
            if o.warning:
                lines.append(f"    WARNING {shown(o.warning)}")
        for m in self.missing:
            lines.append(f"  NOT FOUND {shown(m)}")
        for uri, why in self.skip_reasons.items():
            lines.append(f"  SKIPPED {shown(uri)}: {shown(why)}")
        lines.append(f"labelling policy: {self.policy.describe()}")
        out = shown(self.out)
        lines.append(f"output: {out}/frames and {out}/videos (model_version={self.model_version})")
        return "\n".join(lines)


@contextlib.contextmanager
def triton_endpoint(triton_url: str | None, model_repo: Path, log_dir: Path | None) -> Iterator[str]:
    """The gRPC URL to use: the given one after a health check, or an embedded server's."""
    if triton_url:
        with TritonClient(triton_url) as c:
            c.check_ready()
        yield triton_url
        return
    from workers.triton_server import EmbeddedTriton

    log = (log_dir / "tritonserver.log") if log_dir else None
    # The flow unwinds on a signal and stops the server on the way out, after its Ray tasks (below).
    with EmbeddedTriton(model_repo, log_path=log, stop_on_signals=False) as server:
        print(f"embedded Triton ready at {server.grpc_url} (log: {server.log_path})")
        yield server.grpc_url


def _cancel_in_flight(futures) -> None:
    """Cancel the Ray tasks still running (force: their worker processes are killed), so that none of them
    fails on a vanished model while the flow unwinds and stops Triton. Ray itself is left to the task runner:
    shutting it down from here, inside a signal's unwinding, hands the signal to Ray's native handler, which
    aborts the process."""
    import ray

    for fut in futures:
        try:
            ray.cancel(fut.wrapped_future, force=True)
        except Exception:  # finished meanwhile, or Ray already gone: nothing to cancel
            pass


def _failed_outcome(source: Source, cfg: LabelConfig, exc: BaseException) -> VideoOutcome:
    reason = "triton_unavailable" if isinstance(exc, ServiceUnavailableError) else "internal_error"
    row = video_row(source.uri, status=STATUS_FAILED, model_name=cfg.model_name, run_id=cfg.run_id,
                    started_at=datetime.now(timezone.utc), size_bytes=source.size_bytes, source_mtime=source.mtime,
                    error_reason=reason,
                    error_message=f"gave up after {TASK_RETRIES + 1} attempts: {type(exc).__name__}: {exc}")
    fs, base = resolve(cfg.out)
    write_atomic(videos_table([row]), fs, videos_path(base, cfg.model_version, source.uri))
    return VideoOutcome(row)


@flow(name="label_archive", log_prints=True)
def label_archive(sources: list[str], out: str, triton_url: str | None = None, face_mode: str = "detect",
                  include: list[str] | None = None, exclude: list[str] | None = None,
                  model_repo: str | None = None, chunk_frames: int = 256, force: bool = False,
                  decoder: str = "workers.decode:VideoDecoder", stride: int = POLICY.stride,
                  vote_seconds: float = POLICY.vote_seconds, audio: bool = POLICY.audio,
                  min_fps: float = Limits.min_fps, video_timeout_s: float | None = None) -> dict:
    """Label every video under ``sources`` into Parquet under ``out``. Returns the run summary as a dict.
    ``stride``, ``vote_seconds`` and ``audio`` are the labelling policy (workers/policy.py); ``min_fps`` and
    ``video_timeout_s`` the overall limit per video (workers/isolation.py, Limits)."""
    # Scheduled runs get here without the CLI's preflight. Prefect has stored the parameters by now; the
    # check keeps a secret out of the output and the logs, and `emoframe serve` refuses it before registering.
    check_uris(sources, out)
    tighten_token_file()  # the task runner has started Ray (and written its token) by now
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    policy.check_window(PREPROCESSING.window)
    limits = Limits(min_fps=min_fps, timeout_s=video_timeout_s)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    listing = list_sources(sources, tuple(include or ()), tuple(exclude or ()))
    # One cheap task before Triton starts: a cluster without the driver's storage access fails here, once,
    # not once per video.
    problem = worker_access.submit(out, listing.sources[0].uri if listing.sources else None).result()
    if problem:
        raise PreflightError(f"{problem}. Each Ray node needs its own access to the storage (an instance role, "
                             "AWS_* in the environment of its `ray start`, or ~/.aws); endpoint and region "
                             "travel with the run")
    print(f"{len(listing.sources)} videos to label, {len(listing.skipped_not_video)} files skipped (not a video)")
    repo = Path(model_repo) if model_repo else DEFAULT_MODEL_REPO
    _, out_base = resolve(out)
    log_dir = None if "://" in out else Path(out_base)  # the embedded server's log goes beside local output
    with triton_endpoint(triton_url, repo, log_dir) as url:
        with TritonClient(url) as client:
            client.check_ready()
            version = client.served_version()
        cfg = LabelConfig(out=out, run_id=run_id, triton_url=url, model_version=version, face_mode=face_mode,
                          policy=policy, limits=limits, chunk_frames=chunk_frames, decoder=decoder)
        ledger = {} if force else read_ledger(out, version)
        todo = [s for s in listing.sources if not is_done(s, ledger.get(s.uri), policy, face_mode)]
        todo_uris = {s.uri for s in todo}
        shown_out = out if "://" in out else out_base
        summary = RunSummary(run_id, shown_out, version, policy, skipped_not_video=listing.skipped_not_video,
                             missing=listing.missing, skip_reasons=listing.skip_reasons,
                             already_done=[s.uri for s in listing.sources if s.uri not in todo_uris])
        if summary.already_done:
            print(f"{len(summary.already_done)} videos already labelled by model version {version} with these "
                  "settings (face mode, labelling policy) and unchanged: skipped (--force relabels them)")
        futures = {label_one.submit(s, cfg): s for s in todo}
        try:
            for i, fut in enumerate(as_completed(list(futures)), 1):
                src = futures[fut]
                result = fut.result(raise_on_failure=False)
                outcome = result if isinstance(result, VideoOutcome) else _failed_outcome(src, cfg, result)
                summary.outcomes.append(outcome)
                global finished_in_this_process
                finished_in_this_process += 1
                print(f"[{i}/{len(futures)}] {outcome.row['status']}: {shown(src.uri)}")
        except BaseException:
            # Interrupted (or broken): stop the tasks in flight now, while Triton still serves, so none of
            # them fails on a vanished model and is charged an attempt for it. Unfinished videos hold no rows
            # (writes are atomic) and the next run labels them.
            _cancel_in_flight(futures)
            raise
    print(summary.format())
    return {"run_id": run_id, "out": summary.out, "model_version": version, "labelled": summary.labelled,
            "failed": summary.failed, "already_done": len(summary.already_done),
            "skipped_not_video": len(listing.skipped_not_video),
            "missing": listing.missing, "text": summary.format()}


def run_label_archive(sources: list[str], out: str, *, ray_address: str | None = None, **kwargs) -> dict:
    """Run the flow on Ray: a local Ray when ``ray_address`` is None, else the cluster there. The preflight
    (flows/preflight.py) runs first: a bad source, output or Triton URL raises PreflightError before any
    service starts, and nothing of a refused URI reaches Prefect."""
    preflight(sources, out, kwargs.get("triton_url"))
    swept = sweep()
    if swept:
        print(f"removed {len(swept)} leftovers of killed emoframe runs (Triton shared memory and work folders)")
    if kwargs.get("face_mode", "detect") == "detect":
        require(MTCNN_WEIGHTS)  # before anything starts: a missing set-up is one clear error, not one per video
    with prefect_api() as api_url:
        env = worker_env(api_url)
        init = {"runtime_env": {"env_vars": env}} if env else {}
        runner = RayTaskRunner(address=ray_address, init_kwargs=init) if ray_address else RayTaskRunner(init_kwargs=init)
        return label_archive.with_options(task_runner=runner)(sources, out, **kwargs)
