"""The `label_archive` Prefect flow: list sources, fan out one Ray task per video, record the run.

Triton is either the embedded server (started here, on 127.0.0.1, for the flow's lifetime) or a URL.
Ray is either a local `ray.init()` or the cluster at `ray_address`.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from flows.ledger import DoneKey, Ledger, read_ledger
from flows.moves import adopt_labels, fingerprinted
from flows.preflight import PreflightError, check_uris, preflight
from flows.prefect_api import prefect_api
from flows.ray_runtime import tighten_token_file, worker_env
from flows.records import failed_outcome, record_skipped
from flows.run_summary import RunSummary, Reused
from flows.resources import video_task_resources
from flows.sources import Listing, iter_sources
from flows.terminal import shown
from workers.contract import MODEL_NAME, PREPROCESSING, fingerprint
from workers.faces.weights import MTCNN_WEIGHTS, require
from workers.isolation import Limits
from workers.lifeline import sweep
from workers.model_versions import latest_version
from workers.policy import POLICY, LabellingPolicy
from workers.sink import resolve
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
                  min_fps: float = Limits.min_fps, video_timeout_s: float | None = None, report: bool = True,
                  max_in_flight: int | None = None) -> dict:
    """Label every video under ``sources`` into Parquet under ``out``. Returns the run summary as a dict.
    ``stride``, ``vote_seconds`` and ``audio`` are the labelling policy (workers/policy.py); ``min_fps`` and
    ``video_timeout_s`` the overall limit per video (workers/isolation.py, Limits); ``report`` writes the HTML
    report (flows/report.py) beside a local output; ``max_in_flight`` bounds the videos submitted and not
    finished (default: two per video slot of the Ray cluster, flows/resources.py)."""
    # Scheduled runs get here without the CLI's preflight. Prefect has stored the parameters by now; the
    # check keeps a secret out of the output and the logs, and `emoframe serve` refuses it before registering.
    check_uris(sources, out)
    tighten_token_file()  # the task runner has started Ray (and written its token) by now
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    policy.check_window(PREPROCESSING.window)
    limits = Limits(min_fps=min_fps, timeout_s=video_timeout_s)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    listing = Listing()
    batches = iter_sources(sources, listing, tuple(include or ()), tuple(exclude or ()), exclude_roots=(out,))
    first = next(batches, [])
    # One cheap task before Triton starts: a cluster without the driver's storage access fails here, once,
    # not once per video.
    problem = worker_access.submit(out, first[0].uri if first else None).result()
    if problem:
        raise PreflightError(f"{problem}. Each Ray node needs its own access to the storage (an instance role, "
                             "AWS_* in the environment of its `ray start`, or ~/.aws); endpoint and region "
                             "travel with the run")
    repo = Path(model_repo) if model_repo else DEFAULT_MODEL_REPO
    _, out_base = resolve(out)
    log_dir = None if "://" in out else Path(out_base)  # the embedded server's log goes beside local output
    with triton_endpoint(triton_url, repo, log_dir) as url:
        with TritonClient(url) as client:
            client.check_ready()
            version = client.served_version()
        cfg = LabelConfig(out=out, run_id=run_id, triton_url=url, model_version=version, face_mode=face_mode,
                          policy=policy, limits=limits, chunk_frames=chunk_frames, decoder=decoder)
        summary = RunSummary(run_id, out if "://" in out else out_base, version, policy, missing=listing.missing,
                             warnings=listing.warnings)
        planner = Planner(cfg, force, summary)
        resources = video_task_resources()
        window = InFlight(cfg, summary, max_in_flight or resources.default_in_flight())
        print(f"up to {window.limit} videos in flight, each declared to Ray as {resources.describe()}")
        try:
            with remote_options(**resources.ray_options()):
                for batch in itertools.chain([first], batches):
                    for source in planner.plan(batch):
                        window.submit(source)
                    planner.record_skipped(listing)
                window.drain()
        except BaseException:
            # Interrupted (or broken): stop the tasks in flight now, while Triton still serves, so none of
            # them fails on a vanished model. Unfinished videos hold no rows (writes are atomic) and the
            # next run labels them.
            _cancel_in_flight(window.pending)
            raise
    summary.excluded = listing.excluded
    text = summary.format()
    print(text)
    if report:
        _write_report(out, summary)
    return {"run_id": run_id, "out": summary.out, "model_version": version, **summary.counts(),
            "missing": listing.missing, "text": text, "services_started": True}


class InFlight:
    """At most ``limit`` videos submitted and not finished: a new one is submitted as another finishes, so a
    million-video archive is never a million task runs at once (neither in Ray nor against Prefect's API).
    Finished videos go into the summary's counters and are then dropped."""

    def __init__(self, cfg: LabelConfig, summary: RunSummary, limit: int):
        if limit < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {limit}")
        self.cfg = cfg
        self.summary = summary
        self.limit = limit
        self.pending: dict = {}  # future -> Source
        self.finished: queue.Queue = queue.Queue()  # futures, put by their done callbacks
        self.done = 0

    def submit(self, source: Source) -> None:
        while len(self.pending) >= self.limit:
            self._take(self.finished.get())
        fut = label_one.submit(source, self.cfg)
        self.pending[fut] = source
        fut.add_done_callback(self.finished.put)

    def drain(self) -> None:
        while self.pending:
            self._take(self.finished.get())

    def _take(self, fut) -> None:
        src = self.pending.pop(fut)
        try:
            result = fut.result(raise_on_failure=False)
        except Exception as exc:  # noqa: BLE001 -- Ray's error once its retries of a dead worker are spent
            result = exc
        outcome = result if isinstance(result, VideoOutcome) else failed_outcome(src, self.cfg, result)
        self.summary.add(outcome)
        global finished_in_this_process
        finished_in_this_process += 1
        self.done += 1
        print(f"[{self.done}/{self.done + len(self.pending)}] {outcome.row['status']}: {shown(src.uri)}")


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
    if not summary.changed and (dest / "index.html").exists():
        return
    had = sum(1 for _ in (dest / PAGES).rglob("*.html")) if (dest / PAGES).is_dir() else 0
    try:
        index = write_report(out, max_videos=min(max(summary.labelled, had), DEFAULT_MAX_VIDEOS))
    except (ReportError, OSError) as exc:
        print(f"report: not written ({shown(str(exc))})")
        return
    print(f"report: {index}")


class Planner:
    """What a run must label, batch by batch, after the ledger (read once): done and earlier failures are
    counted in the summary, files seen and not labelled get their "skipped" rows, and a file whose content
    matches a labelled one under another name gets its labels copied."""

    def __init__(self, cfg: LabelConfig, force: bool, summary: RunSummary):
        self.cfg = cfg
        self.force = force
        self.summary = summary
        self.key = DoneKey(cfg.face_mode, cfg.policy, fingerprint(PREPROCESSING))
        self.ledger = Ledger() if force else read_ledger(cfg.out, cfg.model_version)
        self._said_done = False

    def plan(self, sources: list[Source]) -> list[Source]:
        """The sources of this batch to label (with content fingerprints)."""
        todo = []
        for s in sources:
            if self.ledger.is_done(s, self.key):
                failure = self.ledger.earlier_failure(s, self.key)
                if failure:
                    self.summary.earlier_failures.add(failure)
                else:
                    self.summary.already_done += 1
            else:
                todo.append(s)
        if self.summary.already_done and not self._said_done:
            self._said_done = True
            print(f"videos already labelled by model version {self.cfg.model_version} with these settings (face "
                  "mode, labelling policy) and unchanged are skipped (--force relabels them)")
        left = []
        for s in fingerprinted(todo):
            same = None if self.force else self.ledger.same_content(s.content_hash, self.key, s.uri)
            moved = None if same is None else adopt_labels(self.cfg.out, self.cfg.model_version, same, s,
                                                           self.cfg.run_id)
            if moved is None:
                left.append(s)
            else:
                self.summary.reused.add(Reused(s.uri, same["source_uri"], moved))
        return left

    def record_skipped(self, listing: Listing) -> None:
        """Rows for the files the listing skipped since the last call, then forgotten. Called after the batch
        is planned: a name skipped now (a duplicate of a new first name) may be what labels came from."""
        skipped, listing.skipped = listing.skipped, {}
        for uri, why in skipped.items():
            self.summary.add_skipped(uri, why)
        cfg = self.cfg
        record_skipped(skipped, self.ledger, cfg.out, cfg.model_version, cfg.model_name, cfg.run_id)


def run_label_archive(sources: list[str], out: str, *, ray_address: str | None = None, **kwargs) -> dict:
    """Run the flow on Ray: a local Ray when ``ray_address`` is None, else the cluster there. The preflight
    (flows/preflight.py) runs first: a bad source, output or Triton URL raises PreflightError before any
    service starts, and nothing of a refused URI reaches Prefect."""
    preflight(sources, out, kwargs.get("triton_url"))
    quick = nothing_to_do(sources, out, **kwargs)
    if quick is not None:
        return quick
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


def nothing_to_do(sources: list[str], out: str, *, triton_url: str | None = None, face_mode: str = "detect",
                  include: list[str] | None = None, exclude: list[str] | None = None, model_repo: str | None = None,
                  force: bool = False, stride: int = POLICY.stride, vote_seconds: float = POLICY.vote_seconds,
                  audio: bool = POLICY.audio, report: bool = True, **_: object) -> dict | None:
    """The run's summary when every video found is already done (labelled or failed for good, unchanged,
    same settings), worked out without starting Prefect, Ray or Triton: a rerun with nothing new answers in
    seconds. None as soon as one video needs labelling (then the flow runs). The model version is the one
    the embedded server would serve (workers/model_versions.py), or what ``triton_url`` serves."""
    if force:
        return None
    if triton_url:
        with TritonClient(triton_url) as client:
            version = client.served_version()
    else:
        vdir = latest_version((Path(model_repo) if model_repo else DEFAULT_MODEL_REPO) / MODEL_NAME)
        if vdir is None:
            return None  # the server will say what is wrong with the repository
        version = vdir.name
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    cfg = LabelConfig(out=out, run_id=run_id, triton_url=triton_url or "", model_version=version,
                      face_mode=face_mode, policy=policy)
    _, out_base = resolve(out)
    summary = RunSummary(run_id, out if "://" in out else out_base, version, policy)
    planner = Planner(cfg, False, summary)
    listing = Listing()
    batches = []
    for batch in iter_sources(sources, listing, tuple(include or ()), tuple(exclude or ()), exclude_roots=(out,)):
        if not all(planner.ledger.is_done(s, planner.key) for s in batch):
            return None
        batches.append(batch)
    if not batches or listing.missing:
        return None  # the flow reports an empty or missing source the same way as ever
    for batch in batches:
        planner.plan(batch)
    planner.record_skipped(listing)
    summary.excluded, summary.warnings = listing.excluded, listing.warnings
    text = summary.format()
    print(f"nothing to label (no service started):\n{text}")
    if report:
        _write_report(out, summary)
    return {"run_id": run_id, "out": summary.out, "model_version": version, **summary.counts(),
            "missing": [], "text": text, "services_started": False}
