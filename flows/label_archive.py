"""The `label_archive` Prefect flow: list sources, fan out one Ray task per video, record the run.

Triton is either the embedded server (started here, on 127.0.0.1, for the flow's lifetime) or a URL.
Ray is either a local `ray.init()` or the cluster at `ray_address`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner

from flows.ledger import DoneKey, Ledger, read_ledger
from flows.compact import compact_if_needed
from flows.moves import adopt_labels, fingerprinted, remove_moved
from flows.preflight import PreflightError, check_uris, preflight
from flows.prefect_api import prefect_api
from flows.ray_runtime import tighten_token_file, worker_env
from flows.records import failed_outcome, record_skipped
from flows.run_summary import RunSummary, Reused
from flows.sources import list_sources
from flows.terminal import shown
from workers.contract import PREPROCESSING, fingerprint
from workers.faces.weights import MTCNN_WEIGHTS, require
from workers.isolation import Limits
from workers.lifeline import sweep
from workers.policy import POLICY, LabellingPolicy
from workers.rows import evict
from workers.sink import resolve
from workers.state import STATE_DIR, run_lease
from workers.triton_client import TritonClient
from workers.video_task import LabelConfig, Source, VideoOutcome, label_video

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = REPO_ROOT / "model_repo"
TASK_RETRIES = 3


# Videos finished (labelled or failed, and recorded) by flows run in this process: what an interrupted CLI
# run reports. Process-local on purpose: it is read by the process the user interrupted.
finished_in_this_process = 0


@task(retries=TASK_RETRIES, retry_delay_seconds=[2, 5, 10], persist_result=False, log_prints=False,
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


@flow(name="label_archive", log_prints=True)
def label_archive(sources: list[str], out: str, triton_url: str | None = None, face_mode: str = "detect",
                  include: list[str] | None = None, exclude: list[str] | None = None,
                  model_repo: str | None = None, chunk_frames: int = 256, force: bool = False,
                  decoder: str = "workers.decode:VideoDecoder", stride: int = POLICY.stride,
                  vote_seconds: float = POLICY.vote_seconds, audio: bool = POLICY.audio,
                  min_fps: float = Limits.min_fps, video_timeout_s: float | None = None, report: bool = True) -> dict:
    """Label every video under ``sources`` into Parquet under ``out``. Returns the run summary as a dict.
    ``stride``, ``vote_seconds`` and ``audio`` are the labelling policy (workers/policy.py); ``min_fps`` and
    ``video_timeout_s`` the overall limit per video (workers/isolation.py, Limits); ``report`` writes the HTML
    report (flows/report.py) beside a local output."""
    # Scheduled runs get here without the CLI's preflight. Prefect has stored the parameters by now; the
    # check keeps a secret out of the output and the logs, and `emoframe serve` refuses it before registering.
    check_uris(sources, out)
    tighten_token_file()  # the task runner has started Ray (and written its token) by now
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    policy.check_window(PREPROCESSING.window)
    limits = Limits(min_fps=min_fps, timeout_s=video_timeout_s)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    listing = list_sources(sources, tuple(include or ()), tuple(exclude or ()), exclude_roots=(out,))
    # One cheap task before Triton starts: a cluster without the driver's storage access fails here, once,
    # not once per video.
    problem = worker_access.submit(out, listing.sources[0].uri if listing.sources else None).result()
    if problem:
        raise PreflightError(f"{problem}. Each Ray node needs its own access to the storage (an instance role, "
                             "AWS_* in the environment of its `ray start`, or ~/.aws); endpoint and region "
                             "travel with the run")
    print(f"{len(listing.sources)} videos found, {len(listing.skipped)} files skipped")
    repo = Path(model_repo) if model_repo else DEFAULT_MODEL_REPO
    _, out_base = resolve(out)
    log_dir = None if "://" in out else Path(out_base) / STATE_DIR  # the embedded server's log: in the state area
    # [compaction] The run lease: compaction refuses while it is live, and it waits for one already running.
    with run_lease(out, f"label run {run_id}"), triton_endpoint(triton_url, repo, log_dir) as url:
        with TritonClient(url) as client:
            client.check_ready()
            version = client.served_version()
        cfg = LabelConfig(out=out, run_id=run_id, triton_url=url, model_version=version, face_mode=face_mode,
                          policy=policy, limits=limits, chunk_frames=chunk_frames, decoder=decoder)
        summary = RunSummary(run_id, out if "://" in out else out_base, version, policy, missing=listing.missing,
                             skipped=listing.skipped, excluded=listing.excluded, warnings=listing.warnings)
        todo = _plan(listing.sources, cfg, force, summary)
        futures = {label_one.submit(s, cfg): s for s in todo}
        try:
            for i, fut in enumerate(as_completed(list(futures)), 1):
                src = futures[fut]
                try:
                    result = fut.result(raise_on_failure=False)
                except Exception as exc:  # noqa: BLE001 -- Ray's error once its retries of a dead worker are spent
                    result = exc
                outcome = result if isinstance(result, VideoOutcome) else failed_outcome(src, cfg, result)
                summary.outcomes.append(outcome)
                global finished_in_this_process
                finished_in_this_process += 1
                print(f"[{i}/{len(futures)}] {outcome.row['status']}: {shown(src.uri)}")
        except BaseException:
            # Interrupted (or broken): stop the tasks in flight now, while Triton still serves, so none of
            # them fails on a vanished model. Unfinished videos hold no rows (writes are atomic) and the
            # next run labels them.
            _cancel_in_flight(futures)
            raise
    # [compaction] After the lease is released: a partition with many per-video files is compacted (skipped,
    # never failed, while another run writes). The lead wires this as a flow step.
    if summary.outcomes or summary.reused:
        compacted = compact_if_needed(out, version)
        if compacted is not None:
            print(compacted.format())
    text = summary.format()
    print(text)
    if report:
        _write_report(out, summary)
    return {"run_id": run_id, "out": summary.out, "model_version": version, **summary.counts(),
            "missing": listing.missing, "text": text}


def _write_report(out: str, summary: RunSummary) -> None:
    """The HTML report beside local output: the archive page and pages for the videos this run labelled, and
    for as many as the report had before (the most recent ones; `emoframe report --max-videos` makes more). A
    run that changed nothing leaves the report as it is. A report that cannot be written is said, not fatal:
    the labels are on disk."""
    from flows.report import DEFAULT_MAX_VIDEOS, PAGES, ReportError, default_dest, write_report

    if "://" in out:
        print(f"report: not written for output in a bucket; `emoframe report {shown(out)} --to DIR` writes one")
        return
    dest = Path(default_dest(out))
    if not (summary.outcomes or summary.reused) and (dest / "index.html").exists():
        return
    had = sum(1 for _ in (dest / PAGES).rglob("*.html")) if (dest / PAGES).is_dir() else 0
    try:
        index = write_report(out, max_videos=min(max(summary.labelled, had), DEFAULT_MAX_VIDEOS))
    except (ReportError, OSError) as exc:
        print(f"report: not written ({shown(str(exc))})")
        return
    print(f"report: {index}")


def _plan(sources: list[Source], cfg: LabelConfig, force: bool, summary: RunSummary) -> list[Source]:
    """What this run must label, after the ledger: done and earlier failures are counted in ``summary``,
    files seen and not labelled get their "skipped" rows, and a file whose content matches a labelled one
    under another name gets its labels copied. Returns the sources to label (with content fingerprints)."""
    key = DoneKey(cfg.face_mode, cfg.policy, fingerprint(PREPROCESSING))
    ledger = Ledger() if force else read_ledger(cfg.out, cfg.model_version)
    todo = []
    for s in sources:
        if ledger.is_done(s, key):
            failure = ledger.earlier_failure(s, key)
            (summary.earlier_failures.append(failure) if failure else summary.already_done.append(s.uri))
        else:
            todo.append(s)
    if summary.already_done:
        print(f"{len(summary.already_done)} videos already labelled by model version {cfg.model_version} with "
              "these settings (face mode, labelling policy) and unchanged: skipped (--force relabels them)")
    todo = fingerprinted(todo)
    # [compaction] Rows of videos to (re)label leave the compacted files before any new row lands (workers/rows.py).
    fs, base = resolve(cfg.out)
    evict(fs, base, cfg.model_version, [s.uri for s in todo], on_wait=print)
    left, moved_away = [], []
    for s in todo:
        same = None if force else ledger.same_content(s.content_hash, key, s.uri)
        moved = None if same is None else adopt_labels(cfg.out, cfg.model_version, same, s, cfg.run_id, moved_away)
        if moved is None:
            left.append(s)
        else:
            summary.reused.append(Reused(s.uri, same["source_uri"], moved))
    remove_moved(cfg.out, cfg.model_version, moved_away)  # [compaction] one rewrite of a compacted file, not one per move
    # After the reuse: a name skipped now (say a duplicate of a new first name) may be what labels came from.
    record_skipped(summary.skipped, ledger, cfg.out, cfg.model_version, cfg.model_name, cfg.run_id)
    return left


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
