"""Scheduled operation of the `label_archive` flow (see docs/operations.md).

- ``serve``: `emoframe serve`. Prefect's serve registers deployment ``label_archive/<name>`` with a cron schedule
  on a Prefect API server, then polls it and runs each scheduled or triggered flow run itself, on Ray.
- ``label_archive_on_ray``: the entrypoint for work-pool deployments (`flows/run/deploy.py:label_archive_on_ray`),
  where a worker loads the flow from source and it must already carry its Ray task runner.

The CLI imports this module only inside its `serve` subcommand: it pulls in Prefect, Ray and the workers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, get_args

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from emoframe.flows.run.label_archive import label_archive
from emoframe.flows.run.preflight import PreflightError, preflight
from emoframe.flows.run.ray_runtime import RunRayTaskRunner, worker_runtime_env
from emoframe.workers.spec.errors import EmoframeError
from emoframe.workers.spec.contract import PREPROCESSING, FaceMode
from emoframe.workers.processes.isolation import Limits
from emoframe.workers.spec.policy import POLICY, LabellingPolicy
from emoframe.workers.task.video_job import DEFAULT_SEGMENT_MINUTES

DEFAULT_NAME = "label-archive"


def on_ray(ray_address: str | None) -> Flow:
    """`label_archive` with its tasks on the Ray cluster at ``ray_address``; None: the cluster in RAY_ADDRESS,
    else one started by `ray start` on this machine, else a new local Ray (ray.init's own search order).

    Ray workers get this process's PREFECT_API_URL, so that their task runs are recorded in the same API: a
    worker on a cluster node has no Prefect settings of its own and would start a temporary API per process.
    Each worker starts its forkserver as it starts (``worker_runtime_env``), and a Ray the run started
    itself leaves nothing running (``RunRayTaskRunner``), as in `emoframe label`.
    """
    api = PREFECT_API_URL.value()
    init = {"runtime_env": worker_runtime_env({"PREFECT_API_URL": api} if api else {})}
    return label_archive.with_options(task_runner=RunRayTaskRunner(address=ray_address, init_kwargs=init))


# A worker imports the deployment's entrypoint, in a flow-run process whose PREFECT_API_URL is set, and runs
# what it finds there; the plain `label_archive` would come back with Prefect's default thread-pool task
# runner. Point the work pool's RAY_ADDRESS at the cluster.
label_archive_on_ray = on_ray(None)


class ServeSetupError(EmoframeError):
    """The deployment cannot be served as asked; the message says what to do."""


def _absolute(uri: str) -> str:
    """Local paths made absolute: the parameters are stored in the Prefect server and must not depend on the
    working directory of whoever reads them. URIs (s3://, gs://) pass unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def _require_api() -> str:
    """The configured Prefect API URL, checked to answer. Without one Prefect would fall back on an ephemeral
    in-process API, which runs no scheduler: the schedule would silently never fire."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ServeSetupError(
            "a Prefect API server is needed to hold the deployment and run its schedule, and none is "
            "configured: start one with `prefect server start` and set PREFECT_API_URL "
            "(e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`), or `prefect cloud login`")
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise ServeSetupError(f"the Prefect API at PREFECT_API_URL={url} does not answer ({failure}): start it with "
                              "`prefect server start` or point PREFECT_API_URL at a running one")
    return url


def _check_cron(cron: str, timezone: str | None) -> None:
    """Fail now, not at the first scheduled time, on a malformed expression or an unknown time zone."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ServeSetupError(f"{why}: --cron takes five fields 'minute hour day-of-month month day-of-week' "
                              "(e.g. '0 2 * * *' for 02:00 every day) and --timezone an IANA name "
                              "(e.g. Europe/Paris)") from None


def serve(sources: list[str], out: str, *, cron: str, name: str = DEFAULT_NAME, triton_url: str | None = None,
          ray_address: str | None = None, face_mode: str = "detect", include: list[str] | None = None,
          exclude: list[str] | None = None, model_repo: str | None = None, timezone: str | None = None,
          stride: int = POLICY.stride, vote_seconds: float = POLICY.vote_seconds, audio: bool = POLICY.audio,
          min_fps: float = Limits.min_fps, video_timeout_s: float | None = None, report: bool = True,
          triton: str = "embedded", max_in_flight: int | None = None,
          segment_minutes: float = DEFAULT_SEGMENT_MINUTES) -> None:
    """Register deployment ``label_archive/<name>`` on ``cron`` (in ``timezone``, default UTC) and run its flow
    runs in this process until interrupted. Each run labels ``sources`` into ``out`` on Ray, under the
    labelling policy ``stride``, ``vote_seconds``, ``audio``.

    Needs PREFECT_API_URL pointing at a running Prefect server. On exit the deployment is paused, so runs do
    not pile up while nothing serves them; the next `serve` with the same name resumes it.
    """
    if not sources:
        raise ServeSetupError("give at least one source (a file, folder, glob or s3:// / gs:// URI) to label")
    if face_mode not in get_args(FaceMode):
        raise ServeSetupError(f"face_mode must be one of {get_args(FaceMode)}, not {face_mode!r}")
    _check_cron(cron, timezone)
    if triton not in ("embedded", "per-node") or (triton == "per-node" and triton_url):
        raise ServeSetupError(f"triton must be 'embedded' or 'per-node' (and per-node without a Triton URL), "
                              f"not {triton!r}")
    if segment_minutes < 0 or (max_in_flight is not None and max_in_flight < 1):
        raise ServeSetupError("segment_minutes must be >= 0 and max_in_flight >= 1")
    try:
        LabellingPolicy(stride=stride, vote_seconds=vote_seconds, audio=audio).check_window(PREPROCESSING.window)
        Limits(min_fps=min_fps, timeout_s=video_timeout_s)
    except ValueError as exc:
        raise ServeSetupError(str(exc)) from None
    try:  # before registering: Prefect stores the parameters, so a URI with a secret must never get there
        preflight(sources, out, triton_url)
    except PreflightError as exc:
        raise ServeSetupError(str(exc)) from None
    api = _require_api()

    parameters: dict[str, Any] = {
        "sources": [_absolute(s) for s in sources], "out": _absolute(out), "triton_url": triton_url,
        "face_mode": face_mode, "include": include or None, "exclude": exclude or None,
        "model_repo": _absolute(model_repo) if model_repo else None, "stride": stride,
        "vote_seconds": vote_seconds, "audio": audio, "min_fps": min_fps, "report": report,
        "video_timeout_s": video_timeout_s, "triton": triton, "max_in_flight": max_in_flight,
        "segment_minutes": segment_minutes}
    # The task runner is not a flow parameter, so it lives on the served flow object itself. Prefect's serve
    # runs this very object (cloudpickled into a subprocess per run), not a fresh import of the entrypoint.
    flow = on_ray(ray_address)
    ray_text = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
    print(f"serving {flow.name}/{name} from Prefect API {api}: cron {cron!r} ({timezone or 'UTC'}), "
          f"{len(sources)} source(s) -> {parameters['out']}, tasks on {ray_text}")
    try:
        flow.serve(
            name=name,
            schedules=[Cron(cron, timezone=timezone)],
            parameters=parameters,
            description=f"Label {', '.join(parameters['sources'])} into {parameters['out']} with tasks on "
                        f"{ray_text}.",
            tags=["emoframe"],
            # One run at a time: a run that outlasts the cron period would otherwise overlap the next one and
            # label the same videos twice. The later run waits for the slot instead.
            limit=1,
            # Prefect's own pause on shutdown runs inside the event loop that its SIGTERM handler is tearing
            # down, and is lost when the signal comes soon after a run; the pause below is not.
            pause_on_shutdown=False,
        )
    finally:
        _pause(f"{flow.name}/{name}")


def _pause(deployment: str) -> None:
    """Pause the deployment on the way out, so the server stops scheduling runs that nothing would start (they
    would pile up as Late and all start at once on the next `serve`)."""
    try:
        with get_client(sync_client=True) as client:
            client.pause_deployment(client.read_deployment_by_name(deployment).id)
        print(f"paused {deployment}: run `emoframe serve` again to resume its schedule")
    except Exception as exc:  # exiting anyway: say what is left to do rather than mask the original exit
        print(f"could not pause {deployment} ({type(exc).__name__}: {exc}); its schedule stays active: pause it "
              f"with `prefect deployment schedule pause {deployment} --all`", file=sys.stderr)
