"""`emoframe serve`: the `label_archive` flow as a Prefect deployment with a cron schedule, run by this process.

Prefect's serve registers the deployment (and its schedule) with a Prefect API server, then polls it and runs
each scheduled or manually triggered flow run itself, on Ray (a local Ray, or the cluster at ``ray_address``).
The production alternative (a work pool and a worker) is described in docs/operations.md.

This module's top level imports nothing heavy: flows/cli.py builds its parser from ``add_serve_arguments``
and `emoframe --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from workers.errors import EmoframeError

DEFAULT_NAME = "label-archive"


class ServeSetupError(EmoframeError):
    """The deployment cannot be served as asked; the message says what to do."""


def _absolute(uri: str) -> str:
    """Local paths made absolute: the parameters are stored in the Prefect server and must not depend on the
    working directory of whoever reads them. URIs (s3://, gs://) pass unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def _require_api() -> str:
    """The configured Prefect API URL, checked to answer. Without one Prefect would fall back on an ephemeral
    in-process API, which runs no scheduler: the schedule would silently never fire."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeSetupError(
            "emoframe serve needs a Prefect API server to hold the deployment and run its schedule, and none is "
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
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ServeSetupError(f"{why}: --cron takes five fields 'minute hour day-of-month month day-of-week' "
                              "(e.g. '0 2 * * *' for 02:00 every day) and --timezone an IANA name "
                              "(e.g. Europe/Paris)") from None


def serve(sources: list[str], out: str, *, cron: str, name: str = DEFAULT_NAME, triton_url: str | None = None,
          ray_address: str | None = None, face_mode: str = "centred", include: list[str] | None = None,
          exclude: list[str] | None = None, model_repo: str | None = None, timezone: str | None = None) -> None:
    """Register deployment ``label_archive/<name>`` on ``cron`` (in ``timezone``, default UTC) and run its flow
    runs in this process until interrupted. Each run labels ``sources`` into ``out`` on Ray.

    Needs PREFECT_API_URL pointing at a running Prefect server. On exit Prefect pauses the schedule, so runs do
    not pile up while nothing serves them; the next `serve` with the same name resumes it.
    """
    from typing import get_args

    from prefect_ray import RayTaskRunner

    from flows.label_archive import label_archive
    from workers.preprocess import FaceMode

    if not sources:
        raise ServeSetupError("give at least one source (a file, folder, glob or s3:// / gs:// URI) to label")
    if face_mode not in get_args(FaceMode):
        raise ServeSetupError(f"face_mode must be one of {get_args(FaceMode)}, not {face_mode!r}")
    _check_cron(cron, timezone)
    api = _require_api()

    from prefect.schedules import Cron

    parameters = {"sources": [_absolute(s) for s in sources], "out": _absolute(out), "triton_url": triton_url,
                  "face_mode": face_mode, "include": include or None, "exclude": exclude or None,
                  "model_repo": _absolute(model_repo) if model_repo else None}
    # The task runner is not a flow parameter, so it lives on the served flow object itself. Prefect's serve
    # runs this very object (cloudpickled into a subprocess per run), not a fresh import of the entrypoint,
    # which would come back with the default thread-pool runner.
    flow = label_archive.with_options(task_runner=RayTaskRunner(address=ray_address))
    ray_text = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
    print(f"serving label_archive/{name} from Prefect API {api}: cron {cron!r} ({timezone or 'UTC'}), "
          f"{len(sources)} source(s) -> {parameters['out']}, tasks on {ray_text}")
    flow.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters,
        description=f"Label {', '.join(parameters['sources'])} into {parameters['out']} with tasks on {ray_text}.",
        tags=["emoframe"],
        # One run at a time: a run that outlasts the cron period would otherwise overlap the next one and
        # label the same videos twice. The later run waits for the slot instead.
        limit=1,
    )


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The `serve` flags; shared by flows/cli.py and ``python -m flows.deploy``."""
    p.add_argument("sources", nargs="+", help="videos to label on each run: files, folders, globs, s3://, gs://")
    p.add_argument("--out", required=True, help="output folder or bucket URI (Parquet)")
    p.add_argument("--cron", required=True, help="schedule, e.g. '0 2 * * *' (02:00 every day)")
    p.add_argument("--timezone", help="IANA time zone of the cron expression (default UTC)")
    p.add_argument("--name", default=DEFAULT_NAME, help="deployment name: runs are label_archive/<name>")
    p.add_argument("--triton-url", help="gRPC host:port of a running Triton; default: each run starts the "
                                        "embedded server")
    p.add_argument("--ray-address", help="address of a running Ray cluster; default: a local Ray per run")
    p.add_argument("--faces", choices=("centred", "detect"), default="centred",
                   help="centred: face-centred input; detect: raw footage, OpenCV face detector")
    p.add_argument("--include", action="append", default=[], help="glob on paths under a folder (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob on paths to leave out (repeatable)")


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        serve(a.sources, str(a.out), cron=a.cron, name=a.name, triton_url=a.triton_url, ray_address=a.ray_address,
              face_mode=a.faces, include=a.include, exclude=a.exclude, timezone=a.timezone)
    except ServeSetupError as exc:
        print(f"emoframe serve: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    add_serve_arguments(p)
    return cmd_serve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
