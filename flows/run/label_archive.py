"""The `label_archive` Prefect flow: list sources, fan out one Ray task per video, record the run.

Triton is either the embedded server (started here, on 127.0.0.1, for the flow's lifetime), a URL, or one
embedded server per Ray node (``triton="per-node"``, workers/task/triton_nodes.py), each task using its node's.
Ray is either a local `ray.init()` or the cluster at `ray_address`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from prefect import flow, task
from prefect_ray.context import remote_options

from emoframe.flows.archive.compact import compact_if_needed
from emoframe.flows.run.logs import configure as configure_logs
from emoframe.flows.run.preflight import PreflightError, check_uris, preflight
from emoframe.flows.run.prefect_api import outlives_the_run, prefect_api
from emoframe.flows.run.ray_runtime import RunRayTaskRunner, tighten_token_file, worker_env, worker_runtime_env
from emoframe.flows.run.planning import DEFAULT_MODEL_REPO, Planner, new_run_id, nothing_to_do, write_run_report
from emoframe.flows.run.records import already_labelled, failed_outcome
from emoframe.flows.run.run_summary import RunSummary
from emoframe.workers.task.resources import (BUNDLE_MAX_BYTES, BUNDLE_MAX_VIDEOS, VideoTaskResources,
                                             video_task_resources)
from emoframe.flows.archive.sources import PROBE_BATCH, Listing, iter_sources
from emoframe.workers.spec.terminal import shown
from emoframe.workers.spec.contract import PREPROCESSING, FaceMode
from emoframe.workers.media.faces.weights import MTCNN_WEIGHTS, require
from emoframe.workers.processes.isolation import Limits
from emoframe.workers.processes.lifeline import sweep
from emoframe.workers.output import download_cache
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.spec.retries import PREFECT_RETRY_DELAYS_S, PREFECT_TASK_RETRIES, RAY_TASK_RETRIES
from emoframe.workers.output.storage import filesystem_for, is_remote
from emoframe.workers.output.state import STATE_DIR, run_lease
from emoframe.workers.inference.triton_client import TritonClient
from emoframe.workers.task.triton_nodes import Served, for_this_node, per_node_tritons
from emoframe.workers.task.video_job import (DEFAULT_MIN_SEGMENTS, DEFAULT_SEGMENT_MINUTES, LabelConfig, Source,
                                             VideoOutcome)
from emoframe.workers.task.video_task import label_video

logger = logging.getLogger(__name__)


# Videos finished (labelled or failed, and recorded) by flows run in this process: what an interrupted CLI
# run reports. Process-local on purpose: it is read by the process the user interrupted.
finished_in_this_process = 0


def label_one(source: Source, cfg: LabelConfig) -> VideoOutcome:
    """One video. Bad input returns a failed row; anything that escapes (Triton down, a crash) raises.
    A long video (``cfg.segment_minutes``) is labelled in segments, each a Ray task declared as a video
    task is, when the cluster grants workers for them at once (workers/task/segments.py, ray_workers)."""
    node_cfg = for_this_node(cfg)
    if cfg.segment_minutes <= 0:
        return label_video(source, node_cfg)
    from emoframe.workers.task.segments import label_split, ray_workers

    # Segment tasks go where video tasks may (a node with a server); each takes its node's (for_this_node).
    options = {**video_task_resources().ray_options(), **Served("", nodes=cfg.triton_nodes).task_options()}
    reserve = functools.partial(ray_workers, options=options)
    return label_video(source, node_cfg, split=lambda probe: label_split(source, node_cfg, probe, reserve))


# Outcomes of a bundle's videos, kept across Prefect's retries of the task (they run in the same process), so
# that a retry labels only what is left. Emptied as each task returns.
_finished: dict[tuple[str, str], VideoOutcome] = {}


def _videos_task_name() -> str:
    from prefect.runtime import task_run

    sources = task_run.parameters["sources"]
    return f"label {sources[0].uri}" + (f" and {len(sources) - 1} more" if len(sources) > 1 else "")


@task(retries=PREFECT_TASK_RETRIES, retry_delay_seconds=list(PREFECT_RETRY_DELAYS_S), persist_result=False,
      log_prints=False, task_run_name=_videos_task_name)
def label_videos(sources: list[Source], cfg: LabelConfig) -> list[VideoOutcome]:
    """A video, or a bundle of small ones (workers/task/resources.py), one after another. What escapes a
    video (Triton down, a crash) makes Prefect try the task again, without the videos it finished; on its
    last try such a video gets a failed row with a transient reason, and the ones after it go on."""
    from prefect.runtime import task_run

    outcomes = []
    for source in sources:
        key = (cfg.run_id, source.uri)
        outcome = _finished.get(key)
        if outcome is None:
            try:
                outcome = label_one(source, cfg)
            except Exception as exc:
                if task_run.run_count <= PREFECT_TASK_RETRIES:
                    raise
                outcome = failed_outcome(source, cfg, exc)
            _finished[key] = outcome
        outcomes.append(outcome)
    for source in sources:
        _finished.pop((cfg.run_id, source.uri), None)
    return outcomes


@task(persist_result=False, task_run_name="check storage from a worker")
def worker_access(out: str, source: str | None) -> str | None:
    """From a Ray worker, not the driver: can the cluster write the output and read a source? A worker on
    another node may lack the driver's credentials or network. Returns what is wrong, or None."""
    from emoframe.flows.run.preflight import PreflightError, check_output

    try:
        check_output(out)
        if source is not None:
            fs, path = filesystem_for(source)
            with fs.open_input_file(path) as f:
                f.read(1)
    except PreflightError as exc:
        return f"a Ray worker: {exc}"
    except OSError as exc:
        return f"a Ray worker cannot reach the storage: {shown(str(exc).splitlines()[0])}"
    return None


TRITON_MODES = ("embedded", "per-node")


@contextlib.contextmanager
def triton_endpoint(triton_url: str | None, model_repo: Path, log_dir: Path | None, triton: str = "embedded",
                    run_id: str = "") -> Iterator[Served]:
    """What the tasks talk to, checked ready, and the version it serves: the given URL, an embedded server's,
    or (``triton="per-node"``) a server on each Ray node. Servers started here stop on the way out, after the
    flow's Ray tasks (below): the flow unwinds on a signal."""
    if triton not in TRITON_MODES:
        raise ValueError(f"triton must be one of {TRITON_MODES}, not {triton!r}")
    if triton == "per-node":
        if triton_url:
            raise ValueError("give either a Triton URL or triton='per-node', not both")
        with per_node_tritons(model_repo, run_id) as served:  # each checked ready and equal in version
            yield served
        return
    if triton_url:
        with TritonClient(triton_url) as c:
            c.check_ready()
            yield Served(c.served_version(), url=triton_url)
        return
    from emoframe.workers.serving.triton_server import EmbeddedTriton

    log_path = (log_dir / "tritonserver.log") if log_dir else None
    with EmbeddedTriton(model_repo, log_path=log_path, stop_on_signals=False) as server:
        logger.info("embedded Triton ready at %s (log: %s)", server.grpc_url, server.log_path)
        with TritonClient(server.grpc_url) as client:
            client.check_ready()
            yield Served(client.served_version(), url=server.grpc_url)


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
                  stride: int = POLICY.stride,
                  vote_seconds: float = POLICY.vote_seconds, audio: bool = POLICY.audio,
                  min_fps: float = Limits.min_fps, video_timeout_s: float | None = None, report: bool = True,
                  max_in_flight: int | None = None, triton: str = "embedded",
                  segment_minutes: float = DEFAULT_SEGMENT_MINUTES,
                  min_segments: int = DEFAULT_MIN_SEGMENTS) -> dict:
    """Label every video under ``sources`` into Parquet under ``out``. Returns the run summary as a dict.
    ``stride``, ``vote_seconds`` and ``audio`` are the labelling policy (workers/spec/policy.py); ``min_fps`` and
    ``video_timeout_s`` the overall limit per video (workers/processes/isolation.py, Limits); ``report`` writes the HTML
    report (flows/analysis/report.py) beside a local output; ``max_in_flight`` bounds the tasks submitted and not
    finished (default: two per video slot of the Ray cluster, workers/task/resources.py); ``triton="per-node"``
    starts a Triton on each Ray node instead of one beside the flow (workers/task/triton_nodes.py);
    ``segment_minutes``: a video of ``min_segments`` such segments or more is labelled in parallel segments
    when the cluster has that many workers free (workers/task/segments.py), 0 never."""
    # Scheduled runs get here without the CLI's preflight. Prefect has stored the parameters by now; the
    # check keeps a secret out of the output and the logs, and `emoframe serve` refuses it before registering.
    check_uris(sources, out)
    tighten_token_file()  # the task runner has started Ray (and written its token) by now
    policy = LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio)
    policy.check_window(PREPROCESSING.window)
    limits = Limits(min_fps=min_fps, timeout_s=video_timeout_s)
    if not segment_minutes >= 0:
        raise ValueError(f"segment_minutes must be 0 (never split) or more, not {segment_minutes}")
    if min_segments < 2:
        raise ValueError(f"min_segments must be 2 or more, not {min_segments}")
    run_id = new_run_id()
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
    more = " so far (the rest is listed batch by batch as the run goes)" if len(first) >= PROBE_BATCH else ""
    logger.info("%d videos found%s, %d files skipped", len(first), more, len(listing.skipped))
    repo = Path(model_repo) if model_repo else DEFAULT_MODEL_REPO
    _, out_base = filesystem_for(out)
    log_dir = None if is_remote(out) else Path(out_base) / STATE_DIR  # the embedded server's log: in the state area
    # The run lease: compaction refuses while it is live, and it waits for one already running
    # (workers/output/state.py).
    with run_lease(out, f"label run {run_id}"), triton_endpoint(triton_url, repo, log_dir, triton, run_id) as served:
        version = served.version
        # face_mode: any string in the flow's parameters; one that is not a FaceMode fails where faces are read.
        cfg = LabelConfig(out=out, run_id=run_id, triton_url=served.url, model_version=version,
                          face_mode=cast(FaceMode, face_mode), policy=policy, limits=limits,
                          chunk_frames=chunk_frames, triton_nodes=served.nodes,
                          segment_minutes=segment_minutes, min_segments=min_segments)
        summary = RunSummary(run_id, out if is_remote(out) else out_base, version, policy, missing=listing.missing,
                             warnings=listing.warnings)
        planner = Planner(cfg, force, summary)
        resources = video_task_resources()
        window = InFlight(cfg, summary, max_in_flight or resources.default_in_flight(served.room))
        logger.info("up to %d tasks in flight (a video each, or up to %d small ones while every slot is taken), "
                    "each declared to Ray as %s", window.limit, BUNDLE_MAX_VIDEOS, resources.describe())
        try:
            with remote_options(**resources.ray_options(), **served.task_options(), max_retries=RAY_TASK_RETRIES):
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
    # After the lease is released: a partition with many per-video files is compacted (skipped, never
    # failed, while another run writes: flows/archive/compact.py).
    if summary.changed:
        compacted = compact_if_needed(out, version)
        if compacted is not None:
            logger.info("%s", compacted.format())
    text = summary.format()
    # One line for the run's log (the Prefect server keeps the whole text as an artifact); the full summary
    # is the command's answer, which the CLI prints on stdout.
    logger.info("%s", text.splitlines()[0])
    publish_artifacts(summary, text)
    if report:
        write_run_report(out, summary)
    return {"run_id": run_id, "out": summary.out, "model_version": version, **summary.counts(),
            "missing": listing.missing, "text": text, "services_started": True}


SUMMARY_ARTIFACT = "emoframe-run-summary"


def publish_artifacts(summary: RunSummary, text: str) -> None:
    """The summary on the flow run's page of the Prefect UI: a table (counts, class mix) and the text. Only
    for a Prefect server that outlives the run (the temporary one is gone with it, and its events client
    would log an error for each artifact it could no longer send). A Prefect API that refuses them costs the
    run nothing: everything is in the output and the report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if not outlives_the_run():
        return
    try:
        create_table_artifact(summary.table_rows(), key=SUMMARY_ARTIFACT,
                              description=f"run {summary.run_id}: videos by outcome, labelled rows by class")
        create_markdown_artifact(f"```\n{text}\n```", key=f"{SUMMARY_ARTIFACT}-text",
                                 description=f"run {summary.run_id}: the summary as printed")
    except Exception as exc:  # noqa: BLE001 -- an artifact is a view of what is already written
        logger.warning("the run summary was not stored as a Prefect artifact (%s: %s)", type(exc).__name__, exc)


class InFlight:
    """At most ``limit`` tasks submitted and not finished: a new one is submitted as another finishes, so a
    million-video archive is never a million task runs at once (neither in Ray nor against Prefect's API).
    While every slot is taken, small files wait together and go as one task (``resources.bundles``).
    Finished videos go into the summary's counters and are then dropped."""

    def __init__(self, cfg: LabelConfig, summary: RunSummary, limit: int):
        if limit < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {limit}")
        self.cfg = cfg
        self.summary = summary
        self.limit = limit
        self.pending: dict = {}  # future -> its Sources
        self.finished: queue.Queue = queue.Queue()  # futures, put by their done callbacks
        self.waiting: list[Source] = []  # small files, to go as one task
        self.waiting_bytes = 0
        self.done = 0
        self.videos_in_flight = 0

    def submit(self, source: Source) -> None:
        if not VideoTaskResources.bundles(source.size_bytes):
            self.flush()
            self._send([source])
            return
        if self.waiting_bytes + cast(int, source.size_bytes) >= BUNDLE_MAX_BYTES:
            self.flush()
        self.waiting.append(source)
        self.waiting_bytes += cast(int, source.size_bytes)
        while not self.finished.empty():  # what finished meanwhile frees its slot
            self._take(self.finished.get())
        if len(self.pending) < self.limit or len(self.waiting) >= BUNDLE_MAX_VIDEOS:
            self.flush()

    def flush(self) -> None:
        """The files waiting, as one task."""
        if self.waiting:
            bundle, self.waiting, self.waiting_bytes = self.waiting, [], 0
            self._send(bundle)

    def drain(self) -> None:
        self.flush()
        while self.pending:
            self._take(self.finished.get())

    def _send(self, sources: list[Source]) -> None:
        while len(self.pending) >= self.limit:
            self._take(self.finished.get())
        fut = label_videos.submit(sources, self.cfg)
        self.videos_in_flight += len(sources)
        logger.debug("submitted %s%s (%d tasks in flight)", shown(sources[0].uri),
                     f" and {len(sources) - 1} more" if len(sources) > 1 else "", len(self.pending) + 1)
        self.pending[fut] = sources
        fut.add_done_callback(self.finished.put)

    def _take(self, fut) -> None:
        global finished_in_this_process
        sources = self.pending.pop(fut)
        self.videos_in_flight -= len(sources)
        try:
            result = fut.result(raise_on_failure=False)
        except Exception as exc:  # noqa: BLE001 -- Ray's error once its retries of a dead worker are spent
            result = exc
        if isinstance(result, list):
            outcomes = result
        else:  # the task never came back (its Ray worker died each time)
            outcomes = [already_labelled(s, self.cfg) or failed_outcome(s, self.cfg, result) for s in sources]
        for src, outcome in zip(sources, outcomes):
            self.summary.add(outcome)
            finished_in_this_process += 1
            self.done += 1
            parts = f" (in {outcome.segments} segments)" if outcome.segments > 1 else ""
            logger.info("[%d/%d] %s: %s%s", self.done, self.done + self.videos_in_flight + len(self.waiting),
                        outcome.row["status"], shown(src.uri), parts)


def run_label_archive(sources: list[str], out: str, *, ray_address: str | None = None,
                      check_done_first: bool = True, **kwargs) -> dict:
    """Run the flow on Ray: a local Ray when ``ray_address`` is None, else the cluster there. The preflight
    (flows/run/preflight.py) runs first: a bad source, output or Triton URL raises PreflightError before any
    service starts, and nothing of a refused URI reaches Prefect. Then, unless ``check_done_first`` is False
    (the caller did it), a run with nothing to label ends without starting any service
    (flows/run/planning.nothing_to_do)."""
    configure_logs()  # info unless the caller (the CLI's --log-level) set a level
    preflight(sources, out, kwargs.get("triton_url"))
    if kwargs.get("face_mode", "detect") == "detect":
        # Before anything else, even "nothing to label": a machine whose set-up never ran hears it at once.
        require(MTCNN_WEIGHTS)
    if check_done_first:
        quick = nothing_to_do(sources, out, **kwargs)
        if quick is not None:
            return quick
    swept = len(sweep()) + len(download_cache.sweep())
    if swept:
        logger.info("removed %d leftovers of killed emoframe runs (Triton shared memory and work folders, "
                    "copies of remote videos)", swept)
    with prefect_api() as api_url:
        env = worker_env(api_url)
        init = {"runtime_env": worker_runtime_env(env)}
        # Without an address, ray.init() would join whatever cluster `ray start` left running on this machine
        # (/tmp/ray/ray_current_cluster). So: the address given, else RAY_ADDRESS (set for a `ray job submit`
        # entrypoint), else "local", a Ray of the run's own.
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
        runner = RunRayTaskRunner(address=address, init_kwargs=init)
        return label_archive.with_options(task_runner=runner)(sources, out, **kwargs)

